"""Agents' status reports shared by the processes of one deployment.

An agent posts its status to whichever control-plane process took its connection; `groqpolicy
agents`, `/api/v1/opa/agents` and the dashboard are answered by whichever process takes theirs. So
the process that stored a report publishes it on `agents.status`, and every other process (each one
subscribed, not in a queue group) checks and stores it as if the agent had posted it there. A report
that does not fit in one NATS message, or that is posted while NATS is away, stays with the process
that took it; a copy that does not check out is logged and dropped (it checked out where it arrived).
"""

from __future__ import annotations

import logging
import uuid

import anyio.to_thread
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from bridge.kernel.errors import GroqPolicyError
from controlplane.agents.status import StatusStore
from controlplane.infra.nats import NatsConnection

log = logging.getLogger(__name__)

SUBJECT = "agents.status"
ORIGIN_HEADER = "Groqpolicy-Origin"


class StatusSharing:
    def __init__(self, nats: NatsConnection, statuses: StatusStore) -> None:
        self._nats, self._statuses = nats, statuses
        self.origin = uuid.uuid4().hex  # this process: its own reports come back to it and are skipped
        self._sub: Subscription | None = None
        self.received = 0

    async def start(self) -> None:
        if self._nats.connected:
            self._sub = await self._nats.client.subscribe(SUBJECT, cb=self._received)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except NatsError:
                pass

    async def share(self, raw: bytes) -> None:
        """Tell the other processes about a report this one stored (never fails the agent's post)."""
        if self._sub is None or not self._nats.connected:
            return
        nc = self._nats.client
        if len(raw) > nc.max_payload - 1024:
            log.info("agent status of %d bytes: too large for one NATS message, kept by this process only", len(raw))
            return
        try:
            await nc.publish(SUBJECT, raw, headers={ORIGIN_HEADER: self.origin})
        except (NatsError, TimeoutError, OSError) as exc:
            log.warning("agent status: not shared with the other processes (%s)", type(exc).__name__)

    async def _received(self, msg: Msg) -> None:
        if (msg.headers or {}).get(ORIGIN_HEADER) == self.origin:
            return
        try:
            await anyio.to_thread.run_sync(self._statuses.record, msg.data)
            self.received += 1
        except GroqPolicyError as exc:
            log.warning("agent status from another process not stored: %s", exc)
