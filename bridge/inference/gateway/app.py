"""The bridge gateway: HTTP (what Rego's `http.send` calls) -> NATS request on `groq.infer.<tier>`.

A raw ASGI app: this is the hot path of every model-backed policy decision, and a framework's
routing, DI and serialisation layers would cost more than the NATS hop they front. It validates
the body (msgspec), forwards the *original bytes* with the caller's budget in a header, and
passes the worker's JSON through unchanged with `Cache-Control: max-age=N`, so OPA's inter-query
`http.send` cache keeps identical judgments. Every inference request must carry the bridge token
(`Authorization: Bearer <token>`; bundles carry it at data.groqpolicy.config.bridge_token and the
policy library presents it); a gateway with no token configured does not start. Every refusal is a `GroqPolicyError`, answered with
its `status` and the family's error body (`error_body`).

    POST /v1/infer/{tier}  -> 200 reply | 400 not JSON | 401 no or wrong bridge token | 404 unknown tier
                              | 413 too large | 422 invalid body | 503 no worker | 504 deadline
    GET  /v1/models        -> the tier catalog (the service design's shape: {"models": [...]})
    GET  /health           -> {"status": "ok"|"degraded", "nats": bool, counters...}
    GET  /metrics          -> the same counters in Prometheus text format
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from bridge.inference.catalog import default_catalog
from bridge.inference.client import InferClient
from bridge.inference.connect import connect
from bridge.inference.natsclient import drain_or_close
from bridge.inference.wire import (
    MAX_BODY_BYTES,
    InternalError,
    InvalidInferRequest,
    MethodNotAllowed,
    Unauthenticated,
    UnknownRoute,
)
from bridge.kernel.config import GatewaySettings
from bridge.kernel.errors import REQUEST_ID_HEADER, ConfigError, GroqPolicyError, error_body, error_document, request_id
from bridge.kernel.untrusted import header_number

log = logging.getLogger("groqpolicy.gateway")
PREFIX = "/v1/infer/"
Header = tuple[bytes, bytes]
Response = tuple[int, bytes, list[Header]]
MIN_TOKEN_LENGTH = 16
_JSON: Header = (b"content-type", b"application/json")
_TEXT: Header = (b"content-type", b"text/plain; version=0.0.4")
_NO_STORE: Header = (b"cache-control", b"no-store")
_ALLOW_POST: Header = (b"allow", b"POST")
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()


class Gateway:
    """ASGI app. Give it a connected `nc`, or it connects to `settings.nats_url` at lifespan startup."""

    def __init__(self, settings: GatewaySettings | None = None, *, nc: NatsClient | None = None) -> None:
        self.settings = settings or GatewaySettings.from_env()
        self.nc = nc
        self._owns_nc = nc is None
        self.max_body = MAX_BODY_BYTES
        self.client = InferClient(nc, cache_size=self.settings.cache_size, default_deadline_ms=self.settings.deadline_ms)
        self.counts = self.client.counts
        self.counts["unauthenticated"] = 0
        self._authorization = b"Bearer " + load_token(self.settings).encode()

    async def connect(self) -> None:
        if self.nc is None:
            # as the `gateway` role (it may only ask for judgments), with the environment's credential
            self.nc = await connect(self.settings.nats_url, role="gateway", reconnect_time_wait=0.5)
            self.client.nc = self.nc

    async def close(self) -> None:
        if self.nc is not None and self._owns_nc:
            nc, self.nc = self.nc, None
            self.client.nc = None
            await drain_or_close(nc)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.connect()
                except Exception as exc:  # noqa: BLE001 - uvicorn reports the message and exits
                    await send({"type": "lifespan.startup.failed", "message": f"NATS {self.settings.nats_url}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        try:
            if scope["method"] == "POST" and path.startswith(PREFIX):  # the hot path, first and flat
                status, body, headers = await self._infer(path[len(PREFIX):], scope, receive)
            else:
                status, body, headers = self._route(scope)
        except GroqPolicyError as exc:
            status, body, headers = _refusal(exc, scope)
        except Exception as exc:  # a bug still answers with an error body (fail closed), and is logged
            rid = _request_id(scope)
            log.exception("request %s: %s %s: unexpected error", rid, scope["method"], scope["path"])
            status, body, headers = _refusal(InternalError(f"gateway error: {type(exc).__name__}"), scope, rid)
        await _send(send, status, body, headers)

    def _route(self, scope: dict[str, Any]) -> Response:
        """Everything but `POST /v1/infer/{tier}`."""
        path, method = scope["path"], scope["method"]
        if path.startswith(PREFIX):
            raise MethodNotAllowed(f"{method} {path}: method not allowed (want POST)")
        if method == "GET":
            if path == "/health":
                ok = self.nc is not None and self.nc.is_connected
                body = msgspec.json.encode({"status": "ok" if ok else "degraded", "nats": ok, **self.counts})
                return 200 if ok else 503, body, [_JSON, _NO_STORE]
            if path == "/metrics":
                text = "".join(f"# TYPE groqpolicy_gateway_{k}_total counter\ngroqpolicy_gateway_{k}_total {v}\n"
                               for k, v in self.counts.items())
                return 200, text.encode(), [_TEXT, _NO_STORE]
            if path == "/v1/models":
                return 200, msgspec.json.encode({"models": default_catalog().models_listing()}), [_JSON]
        raise UnknownRoute(f"{method} {path}: not found")

    async def _infer(self, tier: str, scope: dict[str, Any], receive: Any) -> Response:
        authorization = b""
        for name, value in scope["headers"]:
            if name == b"content-length" and (size := header_number("Content-Length", value.decode("latin-1"))) > self.max_body:
                raise InvalidInferRequest(f"body: {size} bytes is too large (max {self.max_body})", status=413,
                                          code="body_too_large")
            if name == b"authorization":
                authorization = value
        if not hmac.compare_digest(authorization, self._authorization):
            self.counts["unauthenticated"] += 1
            raise Unauthenticated("missing or invalid bridge token (send Authorization: Bearer <bridge token>)"
                                  if authorization else "missing bridge token (send Authorization: Bearer <bridge token>)")
        body = await _read_body(receive, self.max_body)
        status, data, max_age = await self.client.request(tier, body)
        if status != 200:
            return status, data, [_JSON, _NO_STORE]
        return 200, data, [_JSON, (b"cache-control", b"max-age=%d" % max_age)]


def load_token(settings: GatewaySettings) -> str:
    """The bridge token: given as text, or read from `GROQPOLICY_BRIDGE_TOKEN_FILE`; none is a
    `ConfigError` (a gateway that anyone on the host could use would spend the Groq key)."""
    token = settings.token
    if not token and settings.token_file is not None:
        try:
            token = settings.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"GROQPOLICY_BRIDGE_TOKEN_FILE={settings.token_file}: {exc.strerror}") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"the bridge gateway needs a token of at least {MIN_TOKEN_LENGTH} characters: set "
                          "GROQPOLICY_BRIDGE_TOKEN_FILE (the control plane's <state>/bridge-token)")
    return token


def _request_id(scope: dict[str, Any]) -> str:
    return request_id(next((v for k, v in scope["headers"] if k == _REQUEST_ID), None))


def _refusal(exc: GroqPolicyError, scope: dict[str, Any], rid: str = "") -> Response:
    """An error as the HTTP edge answers it: the error's own status, the family's body, never cached.
    A 5xx is logged with a request id, which its body and `X-Request-Id` carry."""
    headers = [_JSON, _NO_STORE, _ALLOW_POST] if isinstance(exc, MethodNotAllowed) else [_JSON, _NO_STORE]
    if exc.status < 500:
        return exc.status, error_body(exc), headers
    rid = rid or _request_id(scope)
    log.warning("request %s: %s %s answered %d %s: %s", rid, scope["method"], scope["path"], exc.status, exc.kind,
                exc.message)
    document = error_document(exc)
    document["error"]["request_id"] = rid
    return exc.status, msgspec.json.encode(document), [*headers, (_REQUEST_ID, rid.encode())]


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


async def _send(send: Any, status: int, body: bytes, headers: list[Header]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(nats_url: str | None = None, *, nc: NatsClient | None = None, **overrides: Any) -> Gateway:
    """A gateway configured from `GatewaySettings` (the environment), with `nats_url` and any other
    field of the section (`cache_size=0`, `deadline_ms=...`) given here winning."""
    if nats_url:
        overrides["nats_url"] = nats_url
    return Gateway(GatewaySettings.from_env(**overrides), nc=nc)
