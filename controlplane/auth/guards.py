"""Route guards: `guards=[requires("evaluate")]` on a controller or handler.

Every route is protected unless it opts out: `check_routes(app)` (called by `create_app`) refuses
to build an app with a route that neither declares a `requires(...)` guard (on the handler, its
controller or router) nor is marked `opt={"public": True}` (`/health`, `/metrics`; the OpenAPI
schema is public too). A route someone forgets to annotate stops the control plane from starting
instead of serving without a token. (Checked once at start, not per request: Litestar copies the
handler for every guard it runs, which costs more than the check.)

The authenticated token is kept where ASGI keeps the authenticated user, `scope["user"]` (so
Litestar's `request.user` reads it too): a second guard on the same request finds it there.

Missing or unknown token -> 401 with `WWW-Authenticate: Bearer`; a valid token without the scope
-> 403 naming the scope needed and the scopes the token has.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from bridge.kernel.errors import GroqPolicyError
from controlplane.auth.tokens import SCOPES, Token, TokenSet

REALM = 'Bearer realm="groqpolicy"'

Principal = Token


STATE_KEY = "tokens"  # where the app keeps its TokenSet (guards run before dependencies are resolved)


def tokens_of(connection: ASGIConnection) -> TokenSet | None:
    """The app's token set (`app.state["tokens"]`), None when none is configured."""
    tokens: TokenSet | None = connection.app.state.get(STATE_KEY)
    return tokens


def _tokens(connection: ASGIConnection) -> TokenSet:
    tokens = tokens_of(connection)
    if tokens is None:  # fail closed: no token set means nobody is authenticated
        raise NotAuthorizedException("authentication is not configured on this control plane", headers={"WWW-Authenticate": REALM})
    return tokens


def authenticate(connection: ASGIConnection) -> Token:
    """The caller's token, or 401."""
    cached = principal_of(connection)
    if cached is not None:
        return cached
    header = connection.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if not header:
        raise NotAuthorizedException("missing bearer token (send Authorization: Bearer <token>)", headers={"WWW-Authenticate": REALM})
    if scheme.lower() != "bearer" or not presented.strip():
        raise NotAuthorizedException("Authorization: expected 'Bearer <token>'", headers={"WWW-Authenticate": REALM})
    token = _tokens(connection).lookup(presented.strip())
    if token is None:
        raise NotAuthorizedException(
            "invalid bearer token", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
        )
    return remember(connection, token)


def remember(connection: ASGIConnection, token: Token) -> Token:
    """Record `token` as the authenticated caller of this request."""
    connection.scope["user"] = token
    return token


def principal_of(connection: ASGIConnection) -> Token | None:
    """The authenticated caller of this request (set by the guard), if any."""
    user = connection.scope.get("user")
    return user if isinstance(user, Token) else None


class requires:  # noqa: N801 - reads as a declaration: guards=[requires("admin")]
    """A guard admitting tokens that hold any one of `scopes`."""

    def __init__(self, scope: str, *alternatives: str) -> None:
        self.scopes = (scope, *alternatives)
        unknown = [s for s in self.scopes if s not in SCOPES]
        if unknown:
            raise ValueError(f"requires: unknown scope(s) {unknown} (expected {', '.join(SCOPES)})")

    # async on purpose: Litestar runs a sync guard in a worker thread, a hop per request
    async def __call__(self, connection: ASGIConnection, _: BaseRouteHandler) -> None:
        token = authenticate(connection)
        if token.scopes.isdisjoint(self.scopes):
            needed = " or ".join(repr(s) for s in self.scopes)
            raise PermissionDeniedException(
                f"scope {needed} required; token {token.name!r} has {', '.join(sorted(token.scopes))}",
                extra={"required_scopes": list(self.scopes), "token_scopes": sorted(token.scopes)},
            )

    def __repr__(self) -> str:
        return f"requires({', '.join(map(repr, self.scopes))})"


class UnguardedRoute(GroqPolicyError):
    """A route with neither a `requires` guard nor `opt={"public": True}`."""


def declares_scope(handler: BaseRouteHandler) -> bool:
    """Whether the handler or a layer above it (controller, router) has a `requires` guard."""
    return any(isinstance(g, requires) for layer in handler.ownership_layers for g in (getattr(layer, "guards", None) or []))


def check_routes(app: Litestar) -> None:
    """Refuse an app with a route that is neither guarded nor public."""
    unguarded = []
    for route in app.routes:
        if route.path.startswith("/schema"):
            continue
        for handler in getattr(route, "route_handlers", []):
            if handler.http_methods <= {"OPTIONS", "HEAD"}:
                continue  # Litestar's automatic OPTIONS answers carry no data
            if not handler.opt.get("public") and not declares_scope(handler):
                unguarded.append(f"{'/'.join(sorted(handler.http_methods))} {route.path}")
    if unguarded:
        raise UnguardedRoute(f"routes without guards=[requires(...)] or opt={{'public': True}}: {', '.join(unguarded)}")
