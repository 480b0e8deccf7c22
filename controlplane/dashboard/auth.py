"""Who may see the dashboard: a token with the `admin` scope (it shows the audit trail).

A browser cannot send `Authorization` on a navigation, so the dashboard also accepts the token from
an HttpOnly cookie that `POST /dashboard/login` (a form) or `GET /dashboard/login?token=...` (a link
`groqpolicy up` can print) sets after checking it. The cookie holds the token itself, is
`SameSite=Lax` (sent on top-level navigations only; every dashboard route is a read) and is not
`Secure`, so serve the control plane over TLS before exposing it beyond loopback. Without a valid
token the dashboard answers 401 with a login form, like every protected route answers 401.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from controlplane.auth.guards import REALM, remember, requires, tokens_of
from controlplane.auth.tokens import Token

COOKIE = "groqpolicy_dashboard"
SCOPE = "admin"


def token_from(connection: ASGIConnection) -> tuple[str, str]:
    """(the presented token, where it came from): the Authorization header wins over the cookie."""
    header = connection.headers.get("authorization", "")
    if header:
        scheme, _, presented = header.partition(" ")
        return (presented.strip() if scheme.lower() == "bearer" else ""), "header"
    return connection.cookies.get(COOKIE, "").strip(), "cookie"


def check_token(connection: ASGIConnection, presented: str) -> Token:
    tokens = tokens_of(connection)
    if tokens is None:
        raise NotAuthorizedException("authentication is not configured on this control plane", headers={"WWW-Authenticate": REALM})
    if not presented:
        raise NotAuthorizedException("sign in with a token that has the admin scope", headers={"WWW-Authenticate": REALM})
    token = tokens.lookup(presented)
    if token is None:
        raise NotAuthorizedException("invalid token", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
    if SCOPE not in token.scopes:
        raise PermissionDeniedException(
            f"scope '{SCOPE}' required; token {token.name!r} has {', '.join(sorted(token.scopes))}")
    return token


class dashboard_access(requires):  # noqa: N801 - a guard, read as a declaration
    """`requires("admin")`, with the token also taken from the dashboard cookie."""

    def __init__(self) -> None:
        super().__init__(SCOPE)

    async def __call__(self, connection: ASGIConnection, _: BaseRouteHandler) -> None:  # async: no worker thread
        presented, _where = token_from(connection)
        remember(connection, check_token(connection, presented))
