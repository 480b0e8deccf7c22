"""The control plane's NATS connection: a configured server, or an embedded one on the state dir.

With `GROQPOLICY_NATS_URL` (or `NATS_URL`) set, the control plane connects there as the
`controlplane` role, presenting the credential of `NatsSettings` (creds file, nkey, user+password,
TLS; none on an anonymous server). Without it, it starts its own `nats-server` with JetStream on
`<state>/nats` and stops it on shutdown, so a single `groqpolicy serve` works with nothing else
running; that server admits only the identities under `<state>/nats/auth`
(controlplane.infra.natsauth), and the streams and buckets are created first by the bootstrap
identity with the `bootstrap` steps given here (the composition root's; this module does not know
the features that own them).

The connection never gives up after its first success: nats-py reconnects forever, and the owners
of JetStream consumers rebuild them through `on_reconnect`. `connected` tells /health and the
callers whether the server is reachable right now.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import anyio
from nats.aio.client import Client

from bridge.inference.connect import NatsUnreachable, connect
from bridge.inference.natsclient import drain_or_close
from bridge.kernel.config import NatsSettings, Settings
from bridge.kernel.errors import Unavailable
from controlplane.infra.natsauth import NatsAuth, Step, bootstrap
from controlplane.infra.processes import ManagedProcess, start_nats

log = logging.getLogger(__name__)

T = TypeVar("T")


async def after_reconnect(start: Callable[[], Coroutine[Any, Any, T]], what: str, *,
                          attempts: int = 40, delay: float = 0.25) -> tuple[bool, T | None]:
    """`start()` retried while JetStream recovers after a reconnect (a restarted server answers
    before its streams are back): (True, its result), or (False, None) once `attempts` failed, logged."""
    for attempt in range(attempts):
        try:
            return True, await start()
        except Exception as exc:  # noqa: BLE001 - JetStream not ready yet after a restart
            if attempt == attempts - 1:
                log.error("%s could not be restarted after a reconnect: %s", what, exc)
                return False, None
            await asyncio.sleep(delay)
    return False, None

ROLE = "controlplane"


class NatsUnavailable(Unavailable):
    """The control plane has no NATS connection (JetStream state and workers are out of reach)."""

    code = "nats_unavailable"


class NatsConnection:
    def __init__(self, settings: Settings, credential: NatsSettings | None = None, *,
                 bootstrap_steps: Sequence[Step] = ()) -> None:
        self.settings = settings
        self.credential = credential if credential is not None else NatsSettings()
        self.bootstrap_steps = bootstrap_steps
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

    async def _disconnected(self) -> None:
        if self.nc is None:  # our own close(): a stop, not an outage
            return
        log.warning("NATS: disconnected from %s; reconnecting (calls that need NATS answer 503 meanwhile)", self.url)

    async def _start_embedded(self) -> NatsSettings:
        """An embedded nats-server that refuses anonymous clients, bootstrapped; our credential for it."""
        store = self.settings.state_dir / "nats"
        auth = NatsAuth(store / "auth")
        await anyio.to_thread.run_sync(auth.ensure)
        self.embedded = await anyio.to_thread.run_sync(lambda: start_nats(store, extra_args=auth.server_args()))
        self.url = self.embedded.extra["url"]
        log.warning("GROQPOLICY_NATS_URL is not set: started an embedded nats-server at %s (store %s, identities in %s)",
                    self.url, store, auth.dir)
        await bootstrap(self.url, auth, self.bootstrap_steps)
        return auth.credential(ROLE)

    async def connect(self) -> Client:
        try:
            credential = await self._start_embedded() if not self.url else self.credential
            self.nc = await connect(self.url, role=ROLE, settings=credential, reconnect_time_wait=0.25,
                                    reconnected_cb=self._reconnected, disconnected_cb=self._disconnected)
        except NatsUnreachable as exc:
            await self.close()
            raise NatsUnavailable(str(exc)) from exc
        except BaseException:  # a refused credential or TLS (ConfigError) says so itself; stop what started
            await self.close()
            raise
        return self.nc

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def connected_client(self) -> Client | None:
        """The client while connected, else None (for what falls back to something local without NATS)."""
        return self.nc if self.connected else None

    @property
    def client(self) -> Client:
        if self.nc is None or self.nc.is_closed:
            raise NatsUnavailable("NATS: the control plane is not connected")
        return self.nc

    async def close(self) -> None:
        nc, self.nc = self.nc, None
        try:
            if nc is not None:
                await drain_or_close(nc)
        finally:  # also when a stop cut the drain off: the embedded server is our child, it goes with us
            if self.embedded is not None:
                embedded, self.embedded = self.embedded, None
                await anyio.to_thread.run_sync(embedded.stop)
