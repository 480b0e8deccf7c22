"""What every control-plane route shares: the route decorators and the documented error body.

The decorators (`get`, `post`, `put`, `delete`) take Litestar's keyword arguments and differ from
Litestar's decorators in one thing: the route's guards are called with the handler itself. Litestar
hands each guard a fresh shallow copy of the handler (so that a guard cannot change it), and on a
guarded request that copy costs more than the bearer-token check itself. Our guards
(`controlplane.auth.guards`) only read the connection and never touch the handler.

`error_responses(...)` documents, in the OpenAPI schema, the one error body every route answers
with (`bridge.kernel.errors.error_document`): `{"error": {"type", "message", ...}}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, cast

import msgspec
from litestar import HttpMethod
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi import ResponseSpec

# `resolve_guards` wraps every guard with `ensure_async_callable`; Litestar's `Guard` type still
# allows a plain return value, so the loop below names the awaitable form it really gets
_AsyncGuard: TypeAlias = Callable[[ASGIConnection, BaseRouteHandler], Awaitable[None]]
_Path: TypeAlias = str | Sequence[str] | None


class GuardedRoute(HTTPRouteHandler):
    """An HTTP route handler whose guards see the handler itself, not a copy."""

    async def authorize_connection(self, connection: ASGIConnection) -> None:
        for guard in cast("list[_AsyncGuard]", self.resolve_guards()):
            await guard(connection, self)


def get(path: _Path = None, **kwargs: Any) -> GuardedRoute:
    return GuardedRoute(path, http_method=HttpMethod.GET, **kwargs)


def post(path: _Path = None, **kwargs: Any) -> GuardedRoute:
    return GuardedRoute(path, http_method=HttpMethod.POST, **kwargs)


def put(path: _Path = None, **kwargs: Any) -> GuardedRoute:
    return GuardedRoute(path, http_method=HttpMethod.PUT, **kwargs)


def delete(path: _Path = None, **kwargs: Any) -> GuardedRoute:
    return GuardedRoute(path, http_method=HttpMethod.DELETE, **kwargs)


# ---- the error body, as documented in the OpenAPI schema --------------------------------------
class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str  # the exception's class name: ConstitutionalHashMismatch, CompileError, PolicyNotFound, ...
    message: str
    details: Any = None  # request validation: [{message, key, source}]
    stage: str | None = None  # CompileError: check | test | build | load
    messages: list[dict[str, Any]] | None = None  # CompileError: [{stage, message, code, file, row, col}]


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_ERROR_TEXT = {
    400: "Malformed JSON or a body/query that does not match the schema",
    401: "No or unknown bearer token",
    403: "The token lacks the required scope",
    404: "Unknown policy (or path)",
    409: "Conflicting concurrent change, or the policy is not active",
    413: "Request body too large",
    422: "Constitutional hash mismatch, Rego that does not compile, or a batch over 100 contexts",
    429: "Rate limit exceeded",
    502: "A dependency answered with an error",
    503: "NATS, an inference worker, the OPA agent or the local state directory (full, unwritable) is unavailable",
    504: "A dependency did not answer in time",
}


def error_responses(*codes: int) -> dict[int, Any]:
    """`responses=` for a route: the product's `{"error": {...}}` body for each status code."""
    return {c: ResponseSpec(data_container=ErrorBody, description=_ERROR_TEXT[c], generate_examples=False) for c in codes}
