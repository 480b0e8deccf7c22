"""The NATS side of the gateway, usable in-process: `InferClient.request` is what the HTTP gateway
does after parsing, and `InferClient.transport()` is the same call shaped as the WASM evaluator's
`http.send` transport (`bridge.opawasm.host.InferTransport`), so an in-process evaluation reaches the
workers without an HTTP hop and gets the same statuses and error bodies as Rego through the gateway.

A judgment the workers marked cacheable (`max-age` > 0) is kept here too, for its remaining max-age,
so a repeated question is answered without the NATS round trip (the workers' L1/L2 still serve
every other gateway and process). Fail-closed replies carry max-age 0 and are never kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bridge.inference.cache import TTLCache, cache_key
from bridge.inference.wire import (
    BUDGET_HEADER,
    MAX_AGE_HEADER,
    InferRequest,
    InvalidInferRequest,
    NoWorker,
    WorkerError,
    read_request,
    subject_for,
)
from bridge.kernel.config import DEFAULT_DEADLINE_MS
from bridge.kernel.errors import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    DeadlineExceeded,
    GroqPolicyError,
    error_body,
    error_document,
)
from bridge.kernel.vocabulary import ROUTABLE_TIERS

_reply_fields = msgspec.json.Decoder(dict)
_SUBJECTS = {t: subject_for(t) for t in ROUTABLE_TIERS}


def parse(tier: str, body: bytes) -> tuple[str, InferRequest]:
    """(subject, request) or InvalidInferRequest with the gateway's statuses: 404 tier, 400 not JSON, 422 invalid."""
    subject = _SUBJECTS.get(tier)
    if subject is None:
        raise InvalidInferRequest(f"tier {tier!r}: unknown (want one of: {', '.join(ROUTABLE_TIERS)})", status=404, code="unknown_tier")
    return subject, read_request(body)


def _error_status(code: str) -> int:
    """A worker's error code as an HTTP status; anything that is not a 4xx/5xx is the worker's fault (502)."""
    return int(code) if code.isdigit() and 400 <= int(code) <= 599 else 502


def _within(body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The body with a `deadline_ms` no later than http.send's timeout. A value of the wrong type is
    left as it is, so that the request is refused (422) naming it."""
    given = body.get("deadline_ms")
    if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
        return body
    limit = max(1, int(timeout * 1000))
    return {**body, "deadline_ms": min(given or limit, limit)}


class InferClient:
    def __init__(self, nc: NatsClient | None, *, cache_size: int, default_deadline_ms: int = DEFAULT_DEADLINE_MS) -> None:
        self.nc = nc
        self.default_deadline_ms = default_deadline_ms
        self.counts = {"requests": 0, "ok": 0, "client_errors": 0, "no_worker": 0, "deadline": 0, "cache_hits": 0}
        self.cache: TTLCache[bytes] | None = TTLCache(cache_size) if cache_size > 0 else None

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        """(HTTP status, JSON body, max-age seconds). Raises GroqPolicyError for 4xx/503/504 the caller maps."""
        self.counts["requests"] += 1
        try:
            subject, req = parse(tier, body)
        except GroqPolicyError:
            self.counts["client_errors"] += 1
            raise
        key = cache_key(tier, req) if self.cache is not None else ""
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.counts["ok"] += 1
            self.counts["cache_hits"] += 1
            return 200, hit, max(1, int(self.cache.ttl_left(key)))
        budget_ms = req.deadline_ms or self.default_deadline_ms
        msg = await self._ask(subject, tier, body, budget_ms)
        headers = msg.headers or {}
        code = headers.get(ERROR_CODE_HEADER)
        if code is not None:
            status = _error_status(code)
            if 400 <= status < 500:
                self.counts["client_errors"] += 1
            return status, msg.data or error_body(WorkerError(headers.get(ERROR_HEADER, "worker error"), status=status)), 0
        self.counts["ok"] += 1
        try:
            max_age = int(headers.get(MAX_AGE_HEADER, "0"))
        except ValueError:
            max_age = 0
        if key and max_age > 0:
            self._keep(key, msg.data, max_age)
        return 200, msg.data, max_age

    async def _ask(self, subject: str, tier: str, body: bytes, budget_ms: int) -> Msg:
        """The NATS request with the caller's budget; no worker, a closed connection and the deadline are errors."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            self.counts["no_worker"] += 1
            raise NoWorker("NATS: not connected; no inference worker can be reached", code="nats_unavailable")
        t0 = time.monotonic()
        try:
            return await nc.request(subject, body, timeout=budget_ms / 1000, headers={BUDGET_HEADER: str(budget_ms)})
        except NoRespondersError as exc:
            self.counts["no_worker"] += 1
            raise NoWorker(f"{subject}: no inference worker is serving tier {tier!r}") from exc
        except (TimeoutError, NatsTimeout) as exc:
            self.counts["deadline"] += 1
            raise DeadlineExceeded(f"{subject}: no answer within the deadline of {budget_ms} ms "
                                   f"(waited {(time.monotonic() - t0) * 1000:.0f} ms)") from exc
        except ConnectionClosedError as exc:
            self.counts["no_worker"] += 1
            raise NoWorker("NATS: connection closed") from exc

    def _keep(self, key: str, data: bytes, max_age: int) -> None:
        """Store the reply as a later hit will see it: `cached: true`."""
        if self.cache is None:
            return
        try:
            reply = _reply_fields.decode(data)
        except msgspec.DecodeError:
            return
        reply["cached"] = True
        self.cache.set(key, msgspec.json.encode(reply), max_age)

    def transport(self, loop: asyncio.AbstractEventLoop | None = None) -> Callable[[str, Any, float], tuple[int, Any]]:
        """A blocking `(tier, body, timeout) -> (status, json)` for code running *off* `loop`
        (the WASM evaluator runs http.send policies in a worker thread). The budget sent to the
        workers is the smaller of the body's `deadline_ms` and http.send's timeout."""
        loop = loop or asyncio.get_running_loop()

        def call(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
            if isinstance(body, dict):
                body = _within(body, timeout)
            raw = msgspec.json.encode(body)
            fut = asyncio.run_coroutine_threadsafe(self.request(tier, raw), loop)
            try:
                status, data, _ = fut.result(timeout + 1.0)
            except GroqPolicyError as exc:
                return exc.status, error_document(exc)
            return status, msgspec.json.decode(data)

        return call
