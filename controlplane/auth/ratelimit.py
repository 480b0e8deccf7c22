"""Per-client rate limiting with Litestar's `RateLimitConfig`, counted in O(1) per request.

Litestar's stock middleware keeps every request's timestamp of the window in a JSON list that it
decodes and re-encodes on each request; at a generous limit (thousands per second) that costs more
than the handlers it protects. `CountingRateLimitMiddleware` keeps the same fixed window, the same
429 and the same `RateLimit-*` headers, as one counter per client in memory (per process: each
replica limits on its own).

A client is its bearer token (a digest prefix, so tokens never become keys in plain text) or, with
no token, its remote address. Agents' bundle polling, decision logs and status, `/health` and
`/metrics` are not limited: an agent that gets 429 falls behind on policy.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

from litestar.connection import Request
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import DURATION_VALUES, CacheObject, RateLimitConfig, RateLimitMiddleware, get_remote_address
from litestar.stores.base import Store

from controlplane.errors import GroqPolicyError

EXCLUDED = [r"^/bundles/", r"^/logs", r"^/status", r"^/health$", r"^/metrics$"]
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


class RateLimitSpecError(GroqPolicyError):
    pass


def client_identifier(request: Request[Any, Any, Any]) -> str:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer " and header[7:].strip():
        return "token:" + hashlib.sha256(header[7:].strip().encode()).hexdigest()[:16]
    return "addr:" + get_remote_address(request)


class CountingRateLimitMiddleware(RateLimitMiddleware):
    def __init__(self, app: Any, config: RateLimitConfig) -> None:
        super().__init__(app, config)
        self._windows: dict[str, list[int]] = {}  # key -> [reset_at, count]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        key = self.cache_key_from_request(request)
        now = int(time.time())
        window = self._windows.get(key)
        if window is None or window[0] <= now:
            if len(self._windows) > 100_000:  # forget finished windows rather than grow without bound
                self._windows = {k: w for k, w in self._windows.items() if w[0] > now}
            window = self._windows[key] = [now + DURATION_VALUES[self.unit], 0]
        cache_object = CacheObject(history=[], reset=window[0])
        if window[1] >= self.max_requests:
            cache_object.history = [0] * window[1]
            raise TooManyRequestsException(
                detail=f"rate limit: {self.max_requests} requests per {self.unit} exceeded; retry in {window[0] - now}s",
                headers={**self.create_response_headers(cache_object=cache_object), "Retry-After": str(max(1, window[0] - now))},
            )
        window[1] += 1
        if self.config.set_rate_limit_headers:
            cache_object.history = [0] * window[1]
            send = self.create_send_wrapper(send=send, cache_object=cache_object)
        await self.app(scope, receive, send)

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:  # pragma: no cover - unused
        raise NotImplementedError


def parse_rate(spec: str) -> tuple[str, int] | None:
    """`1000/second` -> ("second", 1000); `off` -> None."""
    if spec.strip().lower() in ("off", "none", "0", ""):
        return None
    m = _SPEC.match(spec)
    if not m or int(m.group(1)) < 1:
        raise RateLimitSpecError(f"GROQPOLICY_RATE_LIMIT={spec!r}: expected <n>/<second|minute|hour|day> or off")
    return m.group(2), int(m.group(1))


def rate_limit_config(spec: str) -> RateLimitConfig | None:
    rate = parse_rate(spec)
    if rate is None:
        return None
    return RateLimitConfig(
        rate_limit=rate,  # type: ignore[arg-type]
        exclude=EXCLUDED,
        identifier_for_request=client_identifier,
        middleware_class=CountingRateLimitMiddleware,
    )
