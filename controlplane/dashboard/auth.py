"""Who may see the dashboard: a token with the `admin` scope (it shows the audit trail).

A browser cannot send `Authorization` on a navigation, so the dashboard also accepts the token from
an HttpOnly cookie that `POST /dashboard/login` (a form) or `GET /dashboard/login?code=...` (the link
`groqpolicy up` and `groqpolicy dashboard` print) sets after checking it. The link never carries a
token: its code is one-time and short-lived (`SignInCodes`), issued to an admin token by
`POST /dashboard/codes`, so a printed link that ends up in a log or a shell history is worthless
once used or five minutes old. The cookie holds the token itself, is
`SameSite=Lax` (sent on top-level navigations only; every dashboard route is a read) and is not
`Secure`, so serve the control plane over TLS before exposing it beyond loopback. Without a valid
token the dashboard answers 401 with a login form, like every protected route answers 401.
"""

from __future__ import annotations

import hashlib
import secrets
import time

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


class SignInCodes:
    """One-time sign-in codes, in this process's memory (a restart forgets them: ask for a new link).
    Kept by digest, each bound to the token that asked for it; redeeming removes it."""

    TTL_S = 300.0
    MAX_PENDING = 1000  # codes waiting at once; the oldest go first

    def __init__(self) -> None:
        self._pending: dict[str, tuple[float, Token]] = {}

    def issue(self, token: Token) -> str:
        now = time.monotonic()
        self._pending = {d: p for d, p in self._pending.items() if p[0] > now}
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        code = secrets.token_urlsafe(24)
        self._pending[hashlib.sha256(code.encode()).hexdigest()] = (now + self.TTL_S, token)
        return code

    def redeem(self, code: str) -> Token:
        """The token the code was issued to, once; 401 for an unknown, used or expired code."""
        found = self._pending.pop(hashlib.sha256(code.encode()).hexdigest(), None)
        if found is None or found[0] <= time.monotonic():
            raise NotAuthorizedException("sign-in link: unknown, already used or expired code (ask for a new link: "
                                         "`groqpolicy dashboard`)", headers={"WWW-Authenticate": REALM})
        return found[1]
