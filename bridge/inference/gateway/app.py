"""The bridge gateway: HTTP (what Rego's `http.send` calls) -> NATS request on `groq.infer.<tier>`.

A raw ASGI app: this is the hot path of every model-backed policy decision, and a framework's
routing, DI and serialisation layers would cost more than the NATS hop they front. It validates
the body (msgspec), forwards the *original bytes* with the caller's budget in a header, and
passes the worker's JSON through unchanged with `Cache-Control: max-age=N`, so OPA's inter-query
`http.send` cache keeps identical judgments.

    POST /v1/infer/{tier}  -> 200 reply | 400 not JSON | 404 unknown tier | 413 too large
                              | 422 invalid body | 503 no worker | 504 deadline
    GET  /v1/models        -> the tier catalog (seed shape: {"models": [...]})
    GET  /health           -> {"status": "ok"|"degraded", "nats": bool, counters...}
    GET  /metrics          -> the same counters in Prometheus text format
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS

from bridge.inference.client import InferClient
from bridge.inference.wire import MAX_BODY_BYTES, InvalidInferRequest, bridge_error
from bridge.kernel.config import GatewaySettings
from bridge.kernel.errors import GroqPolicyError, error_body

log = logging.getLogger("groqpolicy.gateway")
PREFIX = "/v1/infer/"
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


class Gateway:
    """ASGI app. Give it a connected `nc`, or a `nats_url` to connect to at lifespan startup."""

    def __init__(self, nats_url: str | None = None, *, nc: NATS | None = None,
                 default_deadline_ms: int | None = None, max_body: int = MAX_BODY_BYTES,
                 cache_size: int | None = None) -> None:
        settings = GatewaySettings.from_env()
        self.nats_url = nats_url or settings.nats_url
        self.nc = nc
        self._owns_nc = nc is None
        self.default_deadline_ms = default_deadline_ms or settings.deadline_ms
        self.max_body = max_body
        self.client = InferClient(nc, self.default_deadline_ms,
                                  cache_size=settings.cache_size if cache_size is None else cache_size)
        self.counts = self.client.counts

    async def connect(self) -> None:
        if self.nc is None:
            self.nc = await nats.connect(self.nats_url, name="groqpolicy-gateway", max_reconnect_attempts=-1,
                                         reconnect_time_wait=0.5)

    async def close(self) -> None:
        if self.nc is not None and self._owns_nc:
            await self.nc.drain()
            self.nc = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    try:
                        await self.connect()
                    except Exception as exc:  # noqa: BLE001
                        await send({"type": "lifespan.startup.failed", "message": f"NATS {self.nats_url}: {exc}"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: dict, receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        if path.startswith(PREFIX):
            if method != "POST":
                return await _send(send, 405, error_body(bridge_error(f"{method} {path}: method not allowed (want POST)", "invalid_request_error", "method_not_allowed", 405)), [_NO_STORE, (b"allow", b"POST")])
            try:
                status, body, headers = await self._infer(path[len(PREFIX):], scope, receive)
            except GroqPolicyError as exc:
                status, body, headers = exc.status, error_body(exc), [_NO_STORE]
            return await _send(send, status, body, headers)
        if path == "/health" and method == "GET":
            ok = self.nc is not None and self.nc.is_connected
            return await _send(send, 200 if ok else 503, msgspec.json.encode({"status": "ok" if ok else "degraded", "nats": ok, **self.counts}), [_NO_STORE])
        if path == "/metrics" and method == "GET":
            text = "".join(f"# TYPE groqpolicy_gateway_{k}_total counter\ngroqpolicy_gateway_{k}_total {v}\n"
                           for k, v in self.counts.items())
            return await _send(send, 200, text.encode(), [_NO_STORE], content_type=b"text/plain; version=0.0.4")
        if path == "/v1/models" and method == "GET":
            from bridge.inference.catalog import default_catalog

            return await _send(send, 200, msgspec.json.encode({"models": default_catalog().models_listing()}), [])
        await _send(send, 404, error_body(bridge_error(f"{method} {path}: not found", "invalid_request_error", "not_found", 404)), [_NO_STORE])

    async def _infer(self, tier: str, scope: dict, receive: Any) -> tuple[int, bytes, list]:
        for name, value in scope["headers"]:
            if name == b"content-length" and int(value or 0) > self.max_body:
                raise InvalidInferRequest(f"body: {int(value)} bytes is too large (max {self.max_body})", status=413, code="body_too_large")
        body = await _read_body(receive, self.max_body)
        self.client.nc = self.nc
        status, data, max_age = await self.client.request(tier, body)
        if status != 200:
            return status, data, [_NO_STORE]
        return 200, data, [(b"cache-control", b"max-age=%d" % max_age)]


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise InvalidInferRequest("client disconnected", status=400, code="disconnected")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InvalidInferRequest(f"body: too large (max {limit} bytes)", status=413, code="body_too_large")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


async def _send(send: Any, status: int, body: bytes, headers: list, content_type: bytes | None = None) -> None:
    ctype = _JSON if content_type is None else (b"content-type", content_type)
    await send({"type": "http.response.start", "status": status,
                "headers": [ctype, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def create_app(nats_url: str | None = None, **kw: Any) -> Gateway:
    return Gateway(nats_url, **kw)
