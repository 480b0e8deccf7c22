"""The control plane's HTTP edge: a request id on every request, request bodies held to the JSON
nesting limit, and the one mapping of errors to HTTP responses.

- Every response carries `X-Request-Id`: the caller's own (when it sends a short, plain one) or a
  fresh UUID. A 5xx also names it in its error body, and is logged with it (an unexpected error
  with its traceback), so a caller's report finds the log line.
- `LimitedRequest` checks a body against `bridge.kernel.untrusted.MAX_JSON_DEPTH` the first time a
  handler or Litestar's parameter parsing reads it: a deeply nested document is a 400 before any
  decoder recurses into it. A compressed body is checked by whoever decompresses it.
- Errors: the product's family (`GroqPolicyError`) with its own status; Litestar's (bad JSON, body
  too large, 401/403, validation) in the same body; anything else is a bug, answered 500 with the
  request id and no detail.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from bridge.kernel.errors import REQUEST_ID_HEADER, GroqPolicyError, error_document, request_id
from bridge.kernel.untrusted import check_json_depth
from controlplane.infra.ids import uuid4_text

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_SCOPE_KEY = "groqpolicy_request_id"
_CHECKED_KEY = "groqpolicy_body_checked"
_HEADER = REQUEST_ID_HEADER.lower().encode()


def request_id_middleware(app: Any) -> Any:
    """Outermost middleware: give the request its id and put it on the response's headers."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _HEADER), b"")
        rid = request_id(given) if given else uuid4_text()  # the fast generator on the common path
        scope[_SCOPE_KEY] = rid

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (_HEADER, rid.encode())]}
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def request_id_of(request: Request) -> str:
    return str(request.scope.get(_SCOPE_KEY, ""))  # our own key on the ASGI scope


class LimitedRequest(Request):
    """A Litestar request whose body is refused (400) when its JSON nests too deep."""

    async def body(self) -> bytes:
        body = await super().body()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        if body and not scope.get(_CHECKED_KEY):
            if self.headers.get("content-encoding", "identity").strip().lower() in ("", "identity"):
                check_json_depth(body)
            scope[_CHECKED_KEY] = True
        return body


def _answer(request: Request, exc: GroqPolicyError, headers: dict[str, str] | None = None) -> Response:
    document = error_document(exc)
    if exc.status >= 500:
        rid = request_id_of(request)
        document["error"]["request_id"] = rid
        log.warning("request %s: %s %s answered %d %s: %s", rid, request.method, request.url.path, exc.status,
                    exc.kind, exc.message)
    if exc.status == 503:  # temporary (NATS reconnecting, a backlog draining): say when to try again
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return Response(content=document, status_code=exc.status, headers=headers)


def product_error(request: Request, exc: GroqPolicyError) -> Response:
    return _answer(request, exc)


def http_error(request: Request, exc: HTTPException) -> Response:
    """Litestar's own errors (bad JSON, body too large, 401/403 from guards) in the product's body."""
    details = {"details": exc.extra} if exc.extra else {}
    err = GroqPolicyError(exc.detail, status=exc.status_code, type_=type(exc).__name__, details=details)
    return _answer(request, err, dict(exc.headers or {}))


def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: 500 with the request id (the log line has the traceback), never the exception's text."""
    rid = request_id_of(request)
    log.error("request %s: %s %s failed: %s: %s", rid, request.method, request.url.path, type(exc).__name__, exc,
              exc_info=exc)
    err = GroqPolicyError(f"internal error (request id {rid}: the control plane's log has the details)",
                          type_="InternalError", details={"request_id": rid})
    return Response(content=error_document(err), status_code=500)


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    GroqPolicyError: product_error, HTTPException: http_error, Exception: unexpected_error,
}
