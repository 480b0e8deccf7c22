"""The route decorators (`get`, `post`, `put`, `delete`) for every control-plane route.

They take Litestar's keyword arguments and differ from Litestar's decorators in one thing: the
route's guards are called with the handler itself. Litestar hands each guard a fresh shallow copy
of the handler (so that a guard cannot change it), and on a guarded request that copy costs more
than the bearer-token check itself. Our guards (`controlplane.auth.guards`) only read the
connection and never touch the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, cast

from litestar import HttpMethod
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler

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
