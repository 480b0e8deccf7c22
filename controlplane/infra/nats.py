"""The control plane's NATS connection: a configured server, or an embedded one on the state dir.

With `GROQPOLICY_NATS_URL` (or `NATS_URL`) set, the control plane connects there. Without it, it
starts its own `nats-server` with JetStream on `<state>/nats` and stops it on shutdown, so a single
`groqpolicy serve` works with nothing else running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import nats
from nats.aio.client import Client

from bridge.kernel.config import Settings
from bridge.kernel.errors import Unavailable
from controlplane.infra.processes import ManagedProcess, start_nats

log = logging.getLogger(__name__)


class NatsUnavailable(Unavailable):
    """The control plane has no NATS connection (JetStream state and workers are out of reach)."""


class NatsConnection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: ManagedProcess | None = None
        self.nc: Client | None = None
        self.url = settings.nats_url
        # called (as tasks) after every reconnect: JetStream consumers such as KV watches do not
        # survive a server restart, so their owners rebuild them here
        self.on_reconnect: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def _reconnected(self) -> None:
        log.warning("NATS: reconnected to %s", self.nc.connected_url.netloc if self.nc and self.nc.connected_url else self.url)
        for hook in self.on_reconnect:
            task = asyncio.create_task(hook())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def connect(self) -> Client:
        if not self.url:
            self.embedded = await anyio.to_thread.run_sync(start_nats, self.settings.state_dir / "nats")
            self.url = self.embedded.extra["url"]
            log.warning("GROQPOLICY_NATS_URL is not set: started an embedded nats-server at %s (store %s)",
                        self.url, self.settings.state_dir / "nats")
        try:
            self.nc = await nats.connect(
                self.url, name="groqpolicy-controlplane", connect_timeout=5, max_reconnect_attempts=-1,
                reconnect_time_wait=0.25, allow_reconnect=True, reconnected_cb=self._reconnected,
            )
        except Exception as exc:  # any connect failure is a start-up error with the URL in it
            await self.close()
            raise NatsUnavailable(f"NATS at {self.url}: cannot connect ({exc or type(exc).__name__})") from exc
        return self.nc

    @property
    def client(self) -> Client:
        if self.nc is None or self.nc.is_closed:
            raise NatsUnavailable("NATS: the control plane is not connected")
        return self.nc

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except Exception:  # noqa: BLE001 - closing anyway
                try:
                    await nc.close()
                except Exception as exc:  # noqa: BLE001 - e.g. the server is gone and publishes were pending
                    log.warning("NATS: closing the connection failed (%r); dropping it", exc)
        if self.embedded is not None:
            await anyio.to_thread.run_sync(self.embedded.stop)
            self.embedded = None
