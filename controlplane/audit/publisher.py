"""Publishing sealed records to the audit stream: one message or one atomic batch, conditioned on
the last sequence.

Why appends cannot fork the chain: every publish carries `Nats-Expected-Last-Sequence` = the
stream sequence of the record it links to. JetStream stores it only if that is still the stream's
last message; a replica that lost the race gets `wrong last sequence` (err_code 10071), reloads
the tail and relinks.

Several records go out as one JetStream *atomic batch* (nats-server 2.12+), conditioned as a
whole on the last sequence, so N concurrent appends cost one round trip and a batch is stored
entirely or not at all. The writer sends a short queue one record per publish instead, each
conditioned the same way and each awaited before the next: nats-server stages every atomic batch of
a file stream in a file store made and deleted for it, which costs it more than a dozen single
publishes (controlplane.audit.writer). (Pipelining single publishes is not safe: with record i
refused, record i+1 could land right after another writer's record while linking to the refused one.
`Nats-Expected-Last-Msg-Id` would catch that on one server, but a clustered stream checks it only
when applying the entry and a mismatch there is a critical write error that stops the stream
replica: both were seen in tests.)

Each record carries `Nats-Msg-Id` = its record id, so the stream's duplicate window catches a
record appended twice. Acknowledgements come back on one wildcard inbox (`<inbox>.<token>`), one
token per publish, instead of a subscription per request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from controlplane.audit.records import AuditRecord
from controlplane.audit.stream import AuditStream, Rejected, status_of

# What a publish ends in: JetStream's ack (a dict: `seq`, maybe `duplicate`), its refusal, or no
# answer within the timeout (the batch may still have committed).
Outcome = dict[str, Any] | Rejected | nats.errors.TimeoutError


class BatchPublisher:
    def __init__(self, store: AuditStream) -> None:
        self.store = store
        self._acks: dict[str, asyncio.Future[Outcome]] = {}
        self._inbox = ""
        self._sub: Subscription | None = None
        self._counter = 0

    async def publish(self, sealed: list[tuple[AuditRecord, bytes]], last_seq: int) -> Outcome:
        """Publish records as one atomic batch conditioned on the stream's last sequence; the ack or error."""
        await self._subscribe()
        self._counter += 1
        token = str(self._counter)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._acks[token] = fut
        try:
            await self._send(sealed, last_seq, f"{self._inbox}.{token}", token)
            try:
                return await asyncio.wait_for(fut, self.store.timeout)
            except TimeoutError:
                return nats.errors.TimeoutError()
        finally:
            self._acks.pop(token, None)

    async def _send(self, sealed: list[tuple[AuditRecord, bytes]], last_seq: int, reply: str, token: str) -> None:
        """One conditioned message, or a batch: its first message carries the condition, its last
        commits the batch and asks for the ack."""
        publish, subject = self.store.nc.publish, self.store.subject  # looked up once, used per record
        condition = {"Nats-Expected-Stream": self.store.name, "Nats-Expected-Last-Sequence": str(last_seq)}
        if len(sealed) == 1:
            rec, data = sealed[0]
            await publish(subject(rec), data, reply=reply, headers={**condition, "Nats-Msg-Id": rec.record_id})
            return
        batch_id = f"{sealed[0][0].record_id}-{token}"
        n = len(sealed)
        for i, (rec, data) in enumerate(sealed, 1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i), "Nats-Msg-Id": rec.record_id}
            if i == 1:
                headers.update(condition)
            if i == n:
                headers["Nats-Batch-Commit"] = "1"
            await publish(subject(rec), data, reply=reply if i == n else "", headers=headers)

    async def _subscribe(self) -> None:
        if self._sub is None:
            self._inbox = self.store.nc.new_inbox()
            self._sub = await self.store.nc.subscribe(self._inbox + ".*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if fut is None or fut.done():
            return
        status = status_of(msg)
        if status:
            fut.set_result(Rejected(int(status), 0, f"no JetStream stream answered ({status})"))
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            fut.set_result(Rejected(0, 0, f"unreadable ack {msg.data[:80]!r}"))
            return
        fut.set_result(Rejected.from_api(resp["error"]) if "error" in resp else resp)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except nats.errors.Error:
                pass
            self._sub = None
