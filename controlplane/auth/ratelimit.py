"""Per-client rate limiting with Litestar's `RateLimitConfig`, counted in O(1) per request.

Litestar's stock middleware keeps every request's timestamp of the window in a JSON list that it
decodes and re-encodes on each request; at a generous limit (thousands per second) that costs more
than the handlers it protects. `CountingRateLimitMiddleware` keeps the same fixed window, the same
429 and the same `RateLimit-*` headers, as one counter per client in memory (per process: each
replica limits on its own).

A client is the token it authenticated with (its name) or, when it presents no token or one this
control plane does not know, its remote address: a caller who sends a new random token with every
request shares one budget with everything else from its address, so failed authentication is
limited too. (Keying by whatever string a caller presents would give each guess a fresh budget.)
Agents' bundle polling, decision logs and status are not limited when their token is known (an
agent that gets 429 falls behind on policy); `/health` and `/metrics` never are. The token found
here is remembered for the request (`scope["user"]`), so the route's guard does not look it up again.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import (
    DURATION_VALUES,
    CacheObject,
    DurationUnit,
    RateLimitConfig,
    RateLimitMiddleware,
    get_remote_address,
)
from litestar.stores.base import Store

from bridge.kernel.errors import ConfigError
from controlplane.auth.guards import STATE_KEY
from controlplane.auth.tokens import Token, TokenSet

PUBLIC = re.compile(r"^/(health|metrics)$")
AGENT_ROUTES = re.compile(r"^/(bundles/|logs|status)")
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


class RateLimitSpecError(ConfigError):
    """`GROQPOLICY_RATE_LIMIT` is not `<n>/<unit>` or `off`."""


def _identify(authorization: str, address: str, tokens: TokenSet | None) -> tuple[Token | None, str]:
    """(the token, when `authorization` presents a known one; the client's key)."""
    if tokens is not None and authorization[:7].lower() == "bearer " and authorization[7:].strip():
        token = tokens.lookup(authorization[7:].strip())
        if token is not None:
            return token, "id:" + token.name
    return None, "addr:" + address


def client_identifier(request: Request[Any, Any, Any]) -> str:
    tokens = request.app.state.get(STATE_KEY)
    return _identify(request.headers.get("authorization", ""), get_remote_address(request), tokens)[1]


def scope_identifier(scope: Any) -> tuple[Token | None, str]:
    """`client_identifier` straight from the ASGI scope (no Request object on the hot path)."""
    authorization = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
    client = scope.get("client")
    return _identify(authorization, client[0] if client else "unknown", scope["litestar_app"].state.get(STATE_KEY))


@dataclass
class SharedRateLimitConfig(RateLimitConfig):
    """Litestar builds an app's middleware once per route: the counters live here, in the one config
    object, so a client has one budget across all routes rather than one per route."""

    windows: dict[str, list[int]] = field(default_factory=dict)  # key -> [reset_at, count]


class CountingRateLimitMiddleware(RateLimitMiddleware):
    def __init__(self, app: Any, config: RateLimitConfig) -> None:
        super().__init__(app, config)
        self._windows: dict[str, list[int]] = config.windows if isinstance(config, SharedRateLimitConfig) else {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if PUBLIC.match(path):
            await self.app(scope, receive, send)
            return
        token, key = scope_identifier(scope)
        if token is not None:
            scope["user"] = token  # authenticated once: the guard reads it (controlplane.auth.guards)
            if AGENT_ROUTES.match(path):
                await self.app(scope, receive, send)
                return
        now = int(time.time())
        window = self._windows.get(key)
        if window is None or window[0] <= now:
            if len(self._windows) > 100_000:  # forget finished windows rather than grow without bound
                for k in [k for k, w in self._windows.items() if w[0] <= now]:
                    del self._windows[k]
            window = self._windows[key] = [now + DURATION_VALUES[self.unit], 0]
        if window[1] >= self.max_requests:
            raise TooManyRequestsException(
                detail=f"rate limit: {self.max_requests} requests per {self.unit} exceeded; retry in {window[0] - now}s",
                headers={**self._headers(window, now), "Retry-After": str(max(1, window[0] - now))},
            )
        window[1] += 1
        if self.config.set_rate_limit_headers:
            send = self._send_with_headers(send, self._headers(window, now))
        await self.app(scope, receive, send)

    def _headers(self, window: list[int], now: int) -> dict[str, str]:
        """The same `RateLimit-*` headers as Litestar's middleware, from the counter."""
        c = self.config
        return {
            c.rate_limit_policy_header_key: f"{self.max_requests}; w={DURATION_VALUES[self.unit]}",
            c.rate_limit_limit_header_key: str(self.max_requests),
            c.rate_limit_remaining_header_key: str(max(0, self.max_requests - window[1])),
            c.rate_limit_reset_header_key: str(window[0] - now),
        }

    @staticmethod
    def _send_with_headers(send: Any, extra: dict[str, str]) -> Any:
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *encoded]
            await send(message)

        return wrapped

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:  # pragma: no cover - unused
        raise NotImplementedError


def parse_rate(spec: str) -> tuple[DurationUnit, int] | None:
    """`1000/second` -> ("second", 1000); `off` -> None."""
    if spec.strip().lower() in ("off", "none", "0", ""):
        return None
    m = _SPEC.match(spec)
    if not m or int(m.group(1)) < 1:
        raise RateLimitSpecError(f"GROQPOLICY_RATE_LIMIT={spec!r}: expected <n>/<second|minute|hour|day> or off")
    unit = next(u for u in DURATION_VALUES if u == m.group(2))  # the pattern admits only these units
    return unit, int(m.group(1))


def rate_limit_config(spec: str) -> RateLimitConfig | None:
    rate = parse_rate(spec)
    if rate is None:
        return None
    return SharedRateLimitConfig(
        rate_limit=rate,
        identifier_for_request=client_identifier,
        middleware_class=CountingRateLimitMiddleware,
    )
