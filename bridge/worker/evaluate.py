"""`policy.evaluate`: a `nats.micro` service that evaluates a named entrypoint for internal tools
(`nats req policy.evaluate '{"entrypoint": "...", "input": {...}}'`).

The evaluator is injected: the control plane passes its in-process WASM evaluator
(`WasmEvaluator.evaluate_async`), so this module knows nothing about bundles. Errors are replies
with nats.micro's error headers (code = HTTP status) and the bridge's JSON error body:
422 bad hash / bad request, 404 unknown entrypoint, 504 deadline, 503 no policy loaded, 500 otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from bridge.wire import (
    CONSTITUTIONAL_HASH,
    DEFAULT_DEADLINE_MS,
    EVALUATE_SUBJECT,
    MAX_DEADLINE_MS,
    BadRequest,
    BridgeError,
    DeadlineExceeded,
    EvaluateReply,
    EvaluateRequest,
    NoWorker,
    encode,
    error_headers,
)

Evaluator = Callable[..., Awaitable[Any]]
"""`await evaluate(entrypoint, input, timeout=seconds)` -> the entrypoint's value."""

_decoder = msgspec.json.Decoder(EvaluateRequest)


def _classify(exc: Exception) -> BridgeError:
    """Map an evaluator's exception to a status by its class name (the WASM package's hierarchy
    is not imported here so that any evaluator can be plugged in)."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "UnknownEntrypointError" in names or isinstance(exc, LookupError):
        return BadRequest(f"entrypoint: {exc}", status=404, code="unknown_entrypoint")
    if "DeadlineExceeded" in names or isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"evaluation: {exc or 'deadline exceeded'}")
    if "PoolClosed" in names:
        return NoWorker(f"evaluation: {exc}", code="no_policy")
    return BridgeError(f"evaluation failed: {exc}", code="evaluation_error")


class PolicyService:
    def __init__(self, nc: NATS, evaluate: Evaluator, *, revision: Callable[[], str | None] | None = None,
                 queue_group: str = "policy-evaluate") -> None:
        self.nc, self.evaluate, self.revision, self.queue_group = nc, evaluate, revision, queue_group
        self.service: Service | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "PolicyService":
        self.service = await add_service(self.nc, name="groqpolicy-policy", version="0.1.0", queue_group=self.queue_group,
                                         description="groqpolicy: evaluate a named policy entrypoint")
        await self.service.add_endpoint(name="evaluate", subject=EVALUATE_SUBJECT, handler=self._handle)
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _handle(self, request: Request) -> None:
        # evaluations may block on http.send: never hold the subscription's callback slot
        t = asyncio.create_task(self._serve(request))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            try:
                req = _decoder.decode(request.data)
            except msgspec.ValidationError as exc:
                raise BadRequest(f"request: {exc}", status=422, code="invalid_request") from None
            except msgspec.DecodeError as exc:
                raise BadRequest(f"request: not JSON ({exc})", status=400, code="invalid_json") from None
            if req.constitutional_hash != CONSTITUTIONAL_HASH:
                raise BadRequest(f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, "
                                 f"got: {req.constitutional_hash})", status=422, code="constitutional_hash_mismatch")
            budget = min(req.deadline_ms or DEFAULT_DEADLINE_MS, MAX_DEADLINE_MS) / 1000
            try:
                result = await asyncio.wait_for(self.evaluate(req.entrypoint, req.input, timeout=budget), budget)
            except BridgeError:
                raise
            except Exception as exc:  # noqa: BLE001 - every evaluator failure is an error reply
                raise _classify(exc) from None
            reply = EvaluateReply(entrypoint=req.entrypoint, result=result,
                                  latency_ms=round((time.perf_counter() - started) * 1000, 3),
                                  revision=self.revision() if self.revision else None)
            await request.respond(encode(reply))
        except BridgeError as err:
            await request.respond(err.body(), headers=error_headers(err))


async def start_policy_service(nc: NATS, evaluate: Evaluator, *, revision: Callable[[], str | None] | None = None) -> PolicyService:
    return await PolicyService(nc, evaluate, revision=revision).start()
