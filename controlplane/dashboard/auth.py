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
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, BucketNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from bridge.kernel.errors import Unavailable
from controlplane.auth.guards import REALM, remember, requires, tokens_of
from controlplane.auth.tokens import Token, TokenSet
from controlplane.infra.recordkeys import UNSIGNED, RecordKeys

log = logging.getLogger(__name__)

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


SHARED_BUCKET = "groqpolicy_signin"  # the codes every process of a deployment can redeem (JetStream KV)
SharedCodes = Callable[[], Awaitable[KeyValue | None]]
# What a shared entry's signature covers, so a record-key signature over anything else (an audit
# record, a policy record) can never pass for a sign-in code.
SIGNIN_DOMAIN = "groqpolicy.dashboard.signin.v1"


class SignInCodes:
    """One-time sign-in codes, kept by digest, each bound to the token that asked for it;
    redeeming removes it. With several control-plane processes a link issued by one is opened on
    whichever process takes the connection, so a deployment on NATS keeps them in the KV bucket
    `groqpolicy_signin` (entries expire with the code; only the token's name is stored, never the
    token): redeeming deletes the entry on the revision it read, so of two processes redeeming one
    code at once only one succeeds. Without the bucket (no NATS, or nobody created it) they are
    in this process's memory (a restart forgets them: ask for a new link).

    A shared entry is signed with the deployment's record key over its digest, token name and
    expiry, and one whose signature does not verify is refused: anyone holding a control-plane NATS
    credential can write the bucket, and an unsigned entry naming an admin token would otherwise
    be a sign-in as that admin (nothing is trusted because it arrived over NATS)."""

    TTL_S = 300.0
    MAX_PENDING = 1000  # codes waiting at once in memory; the oldest go first

    def __init__(self, shared: SharedCodes | None = None, tokens: Callable[[], TokenSet | None] | None = None,
                 keys: RecordKeys | None = None) -> None:
        if shared is not None and keys is None:
            raise ValueError("shared sign-in codes need the record keys: an unsigned entry is refused")
        self._pending: dict[str, tuple[float, Token]] = {}
        self._shared, self._tokens, self._keys = shared, tokens, keys

    async def issue(self, token: Token) -> str:
        code = secrets.token_urlsafe(24)
        digest = hashlib.sha256(code.encode()).hexdigest()
        kv = await self._shared() if self._shared is not None else None
        if kv is not None and self._keys is not None:
            signed = {"digest": digest, "token": token.name, "expires": time.time() + self.TTL_S}
            entry = {**signed, "kid": self._keys.kid, "sig": self._keys.sign(SIGNIN_DOMAIN, signed)}
            try:
                await kv.create(digest, msgspec.json.encode(entry))
            except (NatsError, TimeoutError) as exc:
                raise Unavailable(f"dashboard sign-in: the code cannot be shared ({type(exc).__name__})") from None
            return code
        now = time.monotonic()
        self._pending = {d: p for d, p in self._pending.items() if p[0] > now}
        while len(self._pending) >= self.MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[digest] = (now + self.TTL_S, token)
        return code

    async def redeem(self, code: str) -> Token:
        """The token the code was issued to, once; 401 for an unknown, used or expired code."""
        digest = hashlib.sha256(code.encode()).hexdigest()
        found = self._pending.pop(digest, None)
        if found is not None and found[0] > time.monotonic():
            return found[1]
        kv = await self._shared() if self._shared is not None and found is None else None
        token = await self._redeem_shared(kv, digest) if kv is not None else None
        if token is None:
            raise NotAuthorizedException("sign-in link: unknown, already used or expired code (ask for a new link: "
                                         "`groqpolicy dashboard`)", headers={"WWW-Authenticate": REALM})
        return token

    async def _redeem_shared(self, kv: KeyValue, digest: str) -> Token | None:
        try:
            entry = await kv.get(digest)
            await kv.delete(digest, last=entry.revision)  # fails when another process redeemed it first
        except (KeyValueError, BadRequestError):  # unknown, deleted, or redeemed by another process just now
            return None
        except (NatsError, TimeoutError) as exc:
            raise Unavailable(f"dashboard sign-in: the shared codes cannot be read ({type(exc).__name__})") from None
        try:
            held = msgspec.json.decode(entry.value or b"", type=dict[str, Any])
        except msgspec.DecodeError:
            return None
        if not self._genuine(digest, held):
            return None
        tokens = self._tokens() if self._tokens is not None else None
        if tokens is None or not isinstance(held.get("expires"), float) or held["expires"] <= time.time():
            return None
        return tokens.by_name(str(held.get("token")))

    def _genuine(self, digest: str, held: dict[str, Any]) -> bool:
        """Whether a record key this deployment trusts signed this entry, for this digest."""
        signed = {"digest": digest, "token": held.get("token"), "expires": held.get("expires")}
        kid, sig = held.get("kid"), held.get("sig")
        if not isinstance(kid, str) or not isinstance(sig, str) or self._keys is None:
            problem = UNSIGNED
        else:
            problem = self._keys.check(SIGNIN_DOMAIN, signed, kid, sig)
        if problem:
            log.warning("dashboard sign-in: refused a shared code for token %r: %s (key %r)",
                        held.get("token"), problem, kid)
        return not problem


def shared_codes(client: Callable[[], NatsClient | None]) -> SharedCodes:
    """The deployment's shared codes bucket, opened on first use (None while there is no NATS or
    no bucket: the codes then stay in memory)."""
    opened: list[KeyValue] = []

    async def bucket() -> KeyValue | None:
        if opened:
            return opened[0]
        nc = client()
        if nc is None:
            return None
        try:
            opened.append(await nc.jetstream().key_value(SHARED_BUCKET))
        except (BucketNotFoundError, NatsError, TimeoutError):
            return None
        return opened[0]

    return bucket


async def ensure_shared_codes(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the shared codes bucket where it is missing (NATS's bootstrap runs this)."""
    try:
        await js.key_value(SHARED_BUCKET)
    except BucketNotFoundError:
        await js.create_key_value(bucket=SHARED_BUCKET, ttl=SignInCodes.TTL_S, history=1, max_bytes=1 << 20,
                                  replicas=replicas, description="groqpolicy: one-time dashboard sign-in codes")
