"""The audit stream: its name, subjects and configuration, the chain's linking rules, and raw reads.

Both halves of the trail stand on this module: the writer (controlplane.audit.writer) appends to
the stream, the reader (controlplane.audit.reader) lists and verifies it.

Layout: records live under `audit.<source>.<decision>`, so the source and decision filters run in
the server. The stream refuses deletes and purges (a record cannot be removed through the API) and
keeps a two-minute duplicate window on `Nats-Msg-Id` = the record id, so a record appended again
within it returns the stored copy. Appends are single conditioned publishes, or atomic batches
(nats-server 2.12+) when the writer's queue is long.

Chain rules (the record's own hash is in controlplane.audit.records): a record is filed under the
subject its source and decision name (`subject`); a new record links to the hash the stream's last
record states, and to that record's computed hash when it states none, so a corrupt tail still
gets a successor and `verify` reports it (`tail`).

Reads use JetStream's batched direct get (`$JS.API.DIRECT.GET.<stream>` with `batch` and
`next_by_subj`): stateless, no consumer to create.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig, StreamState
from nats.js.errors import NotFoundError

from bridge.kernel.config import AUDIT_MAX_AGE_S, AUDIT_MAX_BYTES
from bridge.kernel.errors import ConfigError
from controlplane.audit.errors import AuditError, AuditUnavailable
from controlplane.audit.records import GENESIS_HASH, AuditRecord, StoredRecord, check_stored
from controlplane.infra import directget

log = logging.getLogger(__name__)

STREAM = "GROQPOLICY_AUDIT"
PREFIX = "audit"
DUPLICATE_WINDOW_S = 120.0  # a record id appended again within 2 min returns the stored copy
# JetStream's err_codes the trail acts on
WRONG_LAST_SEQUENCE = 10071
BATCH_HAS_DUPLICATE = 10201  # "atomic publish batch contains duplicate message id"
NO_MESSAGE_FOUND = 10037

_decode = msgspec.json.Decoder(AuditRecord).decode


class Rejected(Exception):
    """JetStream refused a request (its `code` and `err_code`).

    Not a GroqPolicyError on purpose: it is a value the writer's retry loop inspects (a lost race,
    a duplicate in a batch) and never reaches a caller, who gets AuditUnavailable if retries run out.
    """

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} {description}")
        self.code = code
        self.err_code = err_code

    @classmethod
    def from_api(cls, err: dict[str, Any]) -> Rejected:
        """From a JetStream API response's `error` object."""
        return cls(int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description", "")))


def status_of(msg: Msg) -> str:
    """A NATS status reply's code ("503", "404", ...), or "" for a message."""
    return msg.headers.get("Status", "") if msg.headers else ""


class AuditStream:
    """One JetStream stream of audit records, as the writer and the reader both see it."""

    def __init__(self, nc: Client, *, name: str = STREAM, prefix: str = PREFIX, replicas: int = 1,
                 timeout: float = 5.0, max_age_s: float = AUDIT_MAX_AGE_S, max_bytes: int = AUDIT_MAX_BYTES) -> None:
        self.nc = nc
        self.name = name
        self.prefix = prefix
        self.replicas = replicas
        # retention: JetStream drops the oldest records past either limit (0: none); verify then starts
        # at the oldest record kept (controlplane.audit.verify)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.timeout = timeout  # of one JetStream request (an ack, a read)

    # -- layout and the chain's rules ----------------------------------------------------------

    @property
    def every_subject(self) -> str:
        return f"{self.prefix}.>"

    def subject(self, record: AuditRecord) -> str:
        """Where a record is filed: `<prefix>.<source>.<decision>`."""
        return f"{self.prefix}.{record.source}.{record.subject_decision}"

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description="groqpolicy audit trail: hash-chained decision records",
            subjects=[self.every_subject],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            allow_direct=True,
            allow_atomic=True,  # a group commit is one atomic batch (nats-server 2.12+)
            deny_delete=True,  # a record cannot be removed through the API...
            deny_purge=True,  # ...nor the stream emptied; only the retention limits drop the oldest
            max_age=self.max_age_s,
            max_bytes=self.max_bytes or -1,
        )

    async def ensure(self) -> None:
        """Create the stream, or bring an existing one's replica count in line."""
        js = self.nc.jetstream(timeout=self.timeout)
        config = self.config()
        try:
            info = await js.stream_info(self.name)
        except NotFoundError:
            await self._admin(js.add_stream(config), "is missing")
            log.info("audit stream %s created (replicas=%d)", self.name, self.replicas)
            return
        have = (info.config.num_replicas, bool(info.config.allow_atomic), info.config.max_age or 0.0, info.config.max_bytes or -1)
        want = (self.replicas, True, float(config.max_age or 0.0), config.max_bytes)
        if have != want:
            await self._admin(js.update_stream(config), f"has (replicas, atomic, max age, max bytes) {have}, want {want}")
            log.info("audit stream %s: (replicas, atomic, max age, max bytes) %s -> %s", self.name, have, want)

    async def _admin(self, call: Awaitable[object], what: str) -> None:
        """Create or update the stream. On an authenticated server only the bootstrap identity may
        (a running process that could update it could also cut it), and a refused request simply
        times out: say what to do instead of a bare timeout."""
        try:
            await call
        except nats.errors.TimeoutError:
            raise ConfigError(f"audit stream {self.name} {what}, and this NATS identity may not create or update it "
                              "(no answer within the timeout); run the bootstrap (`groqpolicy up` does at start) or "
                              "ask the cluster's admin to") from None

    async def tail(self) -> tuple[int, str]:
        """(sequence, hash) of the stream's last record: what the next append links to."""
        resp = await self.api(f"$JS.API.STREAM.MSG.GET.{self.name}", {"last_by_subj": self.every_subject})
        if "error" in resp:
            if resp["error"].get("err_code") == NO_MESSAGE_FOUND:
                state = await self.state()
                if state.messages:  # someone appended between the two calls: read again
                    raise Rejected(409, WRONG_LAST_SEQUENCE, "stream changed while reading its tail")
                return state.last_seq, GENESIS_HASH
            raise Rejected.from_api(resp["error"])
        m = resp["message"]
        data = base64.b64decode(m.get("data", ""))
        h, _, _ = check_stored(data, None)
        # a corrupt tail still gets a successor linked to the hash it states; verify reports it
        return int(m["seq"]), h or hashlib.sha256(data).hexdigest()

    # -- raw access ----------------------------------------------------------------------------

    async def state(self) -> StreamState:
        return (await self.nc.jetstream(timeout=self.timeout).stream_info(self.name)).state

    async def api(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JetStream API request; its JSON answer (which may hold an `error`)."""
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=self.timeout)
        if status_of(msg) == "503":
            raise AuditUnavailable(f"audit trail: JetStream not available ({subject})")
        answer: dict[str, Any] = json.loads(msg.data)
        return answer

    async def _stored(self, seq: int) -> dict[str, Any]:
        resp = await self.api(f"$JS.API.STREAM.MSG.GET.{self.name}", {"seq": seq})
        if "error" in resp:
            raise Rejected.from_api(resp["error"])
        message: dict[str, Any] = resp["message"]
        return message

    async def message(self, seq: int) -> bytes:
        """The stored bytes at `seq`; Rejected when there is none."""
        return base64.b64decode((await self._stored(seq)).get("data", ""))

    async def get(self, seq: int) -> StoredRecord:
        """The record stored at `seq`, read back (the stored copy is the truth)."""
        m = await self._stored(seq)
        _, record, reason = check_stored(base64.b64decode(m.get("data", "")), None)
        if record is None:
            raise AuditError(f"audit record {seq}: {reason}")
        return StoredRecord(seq=int(m["seq"]), subject=m["subject"], record=record)

    async def scan(self, start_seq: int, subject: str, start_time: float | None = None,
                   ) -> AsyncIterator[tuple[int, str, bytes]]:
        """Yield (seq, subject, data) in stream order from start_seq (or start_time), batch by batch."""
        try:
            async for item in directget.scan(self.nc, self.name, subject, start_seq=start_seq, start_time=start_time,
                                             timeout=self.timeout):
                yield item
        except directget.DirectGetRefused as exc:
            raise AuditUnavailable(f"audit trail: direct get answered {exc}") from None

    async def newest_ids(self, count: int) -> set[str]:
        """The record ids of the stream's newest `count` records (unreadable ones left out)."""
        state = await self.state()
        if not state.messages:
            return set()
        ids: set[str] = set()
        async for seq, _, data in self.scan(max(state.first_seq, state.last_seq - count + 1), self.every_subject):
            if seq > state.last_seq:
                break
            try:
                ids.add(_decode(data).record_id)
            except msgspec.DecodeError:
                continue
        return ids
