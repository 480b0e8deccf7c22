"""A Groq-compatible HTTP API for tests and for running without a key (raw ASGI, no framework).

Speaks the paths the `groq` SDK calls (`/openai/v1/chat/completions`, `/openai/v1/models[/{id}]`, and
the Batch API's `/openai/v1/files` and `/openai/v1/batches`: `bridge.emulator.batches`),
with Groq's response shape (`usage.queue_time/prompt_time/completion_time/total_time`, `x_groq.id`),
`x-ratelimit-*` and `x-request-id` headers, and Groq's error bodies
`{"error": {"message", "type", "code"}}` (`bridge.emulator.chat`).

Answers are deterministic (`bridge.emulator.behaviour.verdict_for`). Faults, three ways (first
match wins):
1. a marker in any message: `[[groq-emulator:429]]` (also 498, 500, 503, timeout, malformed,
   schema_violation, json_validate_failed, slow=<ms>) forces that fault on every call;
2. queued per model through the admin API: `POST /admin/faults {"model": m|"*", "faults": [..]}`
   serves them to the next calls, one each (so "429 then success" is expressible);
3. random, per model, from `ModelBehaviour` rates (`POST /admin/config`).
`GET /admin/stats` counts calls per model (`batch_lines`: how many of them were Batch API lines),
faults served and response formats seen.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from typing import Any

import msgspec

from bridge.emulator.batches import BatchService
from bridge.emulator.behaviour import MARKER_RE, EmulatorConfig, ModelBehaviour, check_fault, verdict_for
from bridge.emulator.chat import (
    ChatCall,
    GroqAPIError,
    check_json_mode,
    completion,
    content_for,
    fault_error,
    model_not_found,
    parse_chat,
)
from bridge.inference.catalog import Catalog, default_catalog
from bridge.kernel.errors import error_document

Answer = tuple[int, Any, dict[str, Any]]
"""(status, JSON payload, extra response headers)."""
DOCS = "Please check the URL for typos, or see the docs at https://console.groq.com/docs/"


class _FaultRequest(msgspec.Struct):
    faults: list[str]
    model: str = "*"


class _ConfigRequest(msgspec.Struct):
    default: ModelBehaviour | None = None
    models: dict[str, ModelBehaviour] = {}


def unknown_url(method: str, path: str, hint: str = "") -> GroqAPIError:
    return GroqAPIError(404, f"Unknown request URL: {method} {path}{'. ' + hint if hint else ''}", code="unknown_url")


class GroqEmulator:
    """The ASGI app. `config`, `forced` and `stats` are live: tests may change them directly."""

    def __init__(self, config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.catalog = catalog or default_catalog()
        self.forced: dict[str, deque[str]] = defaultdict(deque)
        self.rng = random.Random(self.config.seed)
        self.stats: dict[str, Any] = {}
        self.reset_stats()
        self._ids = itertools.count(1)
        self._created = int(time.time())
        self.batches = BatchService(self._batch_line, parallelism=self.config.batch_parallelism)

    def reset_stats(self) -> None:
        self.stats = {"calls": Counter(), "faults": Counter(), "formats": Counter(), "params": Counter(),
                      "sampling": Counter(), "total": 0, "batch_lines": 0}

    def force(self, *faults: str, model: str = "*") -> None:
        """Queue faults for the next calls to `model` (or any model)."""
        for f in faults:
            check_fault(f)
        self.forced[model].extend(faults)

    # ---- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = await _read_body(receive) if method in ("POST", "DELETE") else b""
        if body is None:  # the client went away
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            answer = await self._route(method, path, body, headers, receive)
        except GroqAPIError as exc:
            answer = exc.status, error_document(exc), exc.headers
        if answer is None:  # the client went away while we were hanging
            return
        status, payload, extra = answer
        binary = isinstance(payload, bytes)  # a file's content, sent as it is
        raw = payload if binary else msgspec.json.encode(payload)
        kind = b"application/octet-stream" if binary else b"application/json"
        out_headers = [(b"content-type", kind), (b"content-length", str(len(raw)).encode()),
                       (b"x-request-id", f"req_{uuid.uuid4().hex[:26]}".encode())]
        out_headers += [(k.encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": raw})

    async def _route(self, method: str, path: str, body: bytes, headers: dict[str, str], receive: Any) -> Answer | None:
        if path.startswith("/admin/"):
            return self._admin(method, path, body)
        if not path.startswith("/openai/v1/"):
            raise unknown_url(method, path)
        self._auth(headers)
        if method == "POST" and path == "/openai/v1/chat/completions":
            return await self._chat(body, receive)
        if path.startswith(("/openai/v1/files", "/openai/v1/batches")):
            return await self.batches.route(method, path, body, headers)
        if method == "GET" and path == "/openai/v1/models":
            return 200, {"object": "list", "data": [self._model_obj(m) for m in self.catalog.models]}, {}
        if method == "GET" and path.startswith("/openai/v1/models/"):
            return 200, self._model_obj(path[len("/openai/v1/models/"):]), {}
        raise unknown_url(method, path, DOCS)

    def _auth(self, headers: dict[str, str]) -> None:
        if self.config.api_key is not None and headers.get("authorization") != f"Bearer {self.config.api_key}":
            raise GroqAPIError(401, "Invalid API Key", code="invalid_api_key")

    def _model_obj(self, mid: str) -> dict[str, Any]:
        spec = self.catalog.models.get(mid)
        if spec is None:
            raise model_not_found(mid)
        return {"id": mid, "object": "model", "created": self._created, "owned_by": spec.owned_by, "active": True,
                "context_window": spec.context_window, "public_apps": None,
                "max_completion_tokens": spec.max_completion_tokens}

    def _ratelimit_headers(self) -> dict[str, Any]:
        total = self.stats["total"]
        return {
            "x-ratelimit-limit-requests": self.config.requests_per_day,
            "x-ratelimit-remaining-requests": max(0, self.config.requests_per_day - total),
            "x-ratelimit-reset-requests": "6s",
            "x-ratelimit-limit-tokens": self.config.tokens_per_minute,
            "x-ratelimit-remaining-tokens": self.config.tokens_per_minute,
            "x-ratelimit-reset-tokens": "0s",
        }

    def _pick_fault(self, model: str, text: str, b: ModelBehaviour) -> str | None:
        m = MARKER_RE.search(text)
        if m:
            return m.group(1)
        for key in (model, "*"):
            if self.forced.get(key):
                return self.forced[key].popleft()
        r = self.rng.random()
        acc = 0.0
        for fault, rate in b.fault_rates():
            acc += rate
            if r < acc:
                return fault
        return None

    def _count(self, call: ChatCall) -> None:
        self.stats["total"] += 1
        self.stats["calls"][call.model] += 1
        self.stats["formats"][f"{call.model}:{call.format}{':strict' if call.strict else ''}"] += 1

    def _count_params(self, call: ChatCall) -> None:
        for name, value in call.reasoning.items():
            self.stats["params"][f"{call.model}:{name}={value}"] += 1
        for name, value in call.sampling.items():
            self.stats["sampling"][f"{call.model}:{name}={value}"] += 1

    async def _chat(self, body: bytes, receive: Any) -> Answer | None:
        """One completion: checks, counting, the fault (if any), the latency, then the answer.
        None when the client went away while the emulated model was busy."""
        started = time.perf_counter()
        call = parse_chat(body, self.catalog)
        self._count(call)
        check_json_mode(call)
        self._count_params(call)
        b = self.config.behaviour(call.model)
        fault = self._pick_fault(call.model, "\n".join(call.texts), b)
        delay = b.latency_ms + (self.rng.random() * b.jitter_ms if b.jitter_ms else 0.0)
        if fault and fault.startswith("slow="):
            delay, fault = float(fault[5:]), None
        if fault:
            self.stats["faults"][f"{call.model}:{fault}"] += 1
        ratelimit = self._ratelimit_headers()
        if (error := fault_error(fault, call.model, b, ratelimit)) is not None:
            raise error
        if fault == "timeout":
            if await _hang(b.hang_s, receive):
                return None
            raise GroqAPIError(504, "Gateway Timeout", "internal_server_error", "timeout")
        if delay > 0 and await _hang(delay / 1000, receive):
            return None
        content = content_for(call, fault, verdict_for(call.user_text))
        queue_time = 0.0001 + self.rng.random() * 0.0004
        payload = completion(call, content, b, started=started, queue_time=queue_time, seq=next(self._ids),
                             seed=self.config.seed)
        return 200, payload, ratelimit

    async def _batch_line(self, body: bytes) -> Answer:
        """One line of a batch, answered as a direct call would be (nobody disconnects from a batch)."""
        self.stats["batch_lines"] += 1  # also in `total`: total - batch_lines are the direct calls
        answer = await self._chat(body, _never)
        assert answer is not None  # only a disconnect makes it None
        return answer

    def _admin(self, method: str, path: str, body: bytes) -> Answer:
        try:
            if method == "GET" and path == "/admin/stats":
                return 200, {"total": self.stats["total"], "batch_lines": self.stats["batch_lines"],
                             "calls": dict(self.stats["calls"]),
                             "faults": dict(self.stats["faults"]), "formats": dict(self.stats["formats"]),
                             "params": dict(self.stats["params"]), "sampling": dict(self.stats["sampling"])}, {}
            if method == "POST" and path == "/admin/faults":
                fr = msgspec.json.decode(body, type=_FaultRequest)
                self.force(*fr.faults, model=fr.model)
                return 200, {"queued": {k: list(v) for k, v in self.forced.items() if v}}, {}
            if method == "POST" and path == "/admin/config":
                cr = msgspec.json.decode(body, type=_ConfigRequest)
                if cr.default is not None:
                    self.config.default = cr.default
                self.config.models.update(cr.models)
                return 200, msgspec.to_builtins(self.config), {}
            if method == "POST" and path == "/admin/reset":
                self.forced.clear()
                self.reset_stats()
                self.config.models.clear()
                self.config.default = ModelBehaviour()
                return 200, {"reset": True}, {}
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise GroqAPIError(400, f"{path}: {exc}") from exc
        raise GroqAPIError(404, f"Unknown admin URL: {method} {path}", code="unknown_url")


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _never() -> dict[str, Any]:
    """An ASGI `receive` that never reports a disconnect."""
    await asyncio.Future()
    raise AssertionError("unreachable")


async def _read_body(receive: Any) -> bytes | None:
    """The request body, or None when the client disconnected first."""
    body = b""
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    return body


async def _hang(seconds: float, receive: Any) -> bool:
    """Sleep, but stop early when the client disconnects; True when it did."""
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    waiter = asyncio.ensure_future(receive())
    done, _ = await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    for t in (sleeper, waiter):
        if not t.done():
            t.cancel()
    return waiter in done and waiter.result().get("type") == "http.disconnect"


def create_app(config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> GroqEmulator:
    return GroqEmulator(config, catalog)
