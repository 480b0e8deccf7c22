"""One pooled connection per model, with a bound on the calls in flight to it.

Every judgment for a model (of one evaluation batch, or of concurrent requests for the same tier)
goes through that model's own `AsyncGroq`, whose httpx client speaks HTTP/2 where the endpoint does:
the calls are streams multiplexed over one TCP+TLS connection instead of a connection each, so a
burst costs no handshakes and GroqCloud sees one client per model. `model_concurrency` bounds the
streams per model; a call that waits for a slot waits inside its own timeout.

HTTP/2 is negotiated by ALPN on https (`auto`: GroqCloud; HTTP/1.1 where a server declines). A
plain-http endpoint speaks HTTP/2 only with prior knowledge (`prior-knowledge`: the emulator under
hypercorn); `off` keeps HTTP/1.1 with a keep-alive pool of the same bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import groq
import httpx

from bridge.kernel.config import EngineSettings

KEEPALIVE_S = 60.0


def http_client(base_url: str, mode: str, max_connections: int) -> httpx.AsyncClient:
    """An httpx client for one model: HTTP/2 as `mode` says, a pool bounded by `max_connections`."""
    h2 = mode == "prior-knowledge" or (mode == "auto" and base_url.startswith("https://"))
    # with prior knowledge there is no HTTP/1.1 to fall back to: h2c from the first byte
    h1 = mode != "prior-knowledge"
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                          keepalive_expiry=KEEPALIVE_S)
    return httpx.AsyncClient(http1=h1, http2=h2, limits=limits, timeout=httpx.Timeout(30.0, connect=5.0))


class ModelPool:
    """A client and a concurrency slot per model. With `per_model=False` all models share `base`
    (a test's or a caller's own client) and only the slots are per model."""

    def __init__(self, base: groq.AsyncGroq, models: Iterable[str], settings: EngineSettings, *,
                 per_model: bool = True) -> None:
        self.base = base
        self.settings = settings
        self.per_model = per_model
        self._clients: dict[str, groq.AsyncGroq] = {}
        self._slots = {m: asyncio.Semaphore(settings.model_concurrency) for m in models}
        self.waiting = 0

    def client(self, model: str) -> groq.AsyncGroq:
        if not self.per_model:
            return self.base
        c = self._clients.get(model)
        if c is None:  # made on first use: a model never called holds no connection
            http = http_client(str(self.base.base_url), self.settings.http2, self.settings.model_concurrency)
            c = self._clients[model] = self.base.copy(http_client=http)
        return c

    @asynccontextmanager
    async def slot(self, model: str, timeout: float) -> AsyncIterator[None]:
        """Hold one of the model's call slots; TimeoutError when none frees up within `timeout`."""
        sem = self._slots.setdefault(model, asyncio.Semaphore(self.settings.model_concurrency))
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await sem.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            sem.release()

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()
