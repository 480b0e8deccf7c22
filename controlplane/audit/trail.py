"""The audit trail on JetStream: serialized, hash-chained appends and chain-ordered reads.

`AuditTrail` is one object over one stream that owns both halves and hands each call to the one
that does it:

    stream.py     the stream's name, subjects and configuration, the chain's linking rules, raw reads
    writer.py     TrailWriter: group commit, write-behind through the spool, retries
    publisher.py  one atomic batch conditioned on the last sequence (why the chain cannot fork)
    adoption.py   a batch whose ack was lost is adopted if it landed (never stored twice)
    signing.py    one signature of the record key per commit, and which records it vouches for
    checkpoints.py  the stream's head signed at an interval and kept outside it (a cut tail shows)
    reader.py     TrailReader: list (oldest or newest first), verify (verify.py)

Code that only writes (the evaluation sink, decision-log ingest) needs `.writer`; code that only
reads (the audit API, the dashboard) needs `.reader`, or `.store` for raw stored bytes. Reads wait
for this process's queued records first, so a caller reads its own decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar, overload

from nats.aio.client import Client
from nats.js.api import StreamConfig

from bridge.kernel.config import AUDIT_MAX_AGE_S, AUDIT_MAX_BYTES
from controlplane.audit.checkpoints import Checkpoints
from controlplane.audit.errors import AuditError, AuditQueryError, AuditRecordTooLarge, AuditUnavailable
from controlplane.audit.reader import AuditFilters, AuditPage, TrailReader, VerifyReport
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.audit.spool import AuditSpool
from controlplane.audit.stream import PREFIX, STREAM, AuditStream
from controlplane.audit.writer import CLOSE_DRAIN_S, MAX_BACKLOG, SPOOL_LINGER_S, TrailWriter
from controlplane.infra.recordkeys import RecordKeys

__all__ = [
    "AuditError", "AuditFilters", "AuditPage", "AuditQueryError", "AuditRecordTooLarge", "AuditTrail",
    "AuditUnavailable", "VerifyReport",
]

T = TypeVar("T")


class _Forward(Generic[T]):
    """An attribute of the trail kept on one of its parts (read and written there), so a setting
    changed on the trail, as tests and operators do, is the one its writer or stream uses."""

    def __init__(self, part: str, name: str = "") -> None:
        self.part = part
        self.name = name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    @overload
    def __get__(self, trail: None, owner: type) -> _Forward[T]: ...
    @overload
    def __get__(self, trail: AuditTrail, owner: type | None = None) -> T: ...

    def __get__(self, trail: AuditTrail | None, owner: type | None = None) -> T | _Forward[T]:
        if trail is None:
            return self
        value: T = getattr(getattr(trail, self.part), self.name)
        return value

    def __set__(self, trail: AuditTrail, value: T) -> None:
        setattr(getattr(trail, self.part), self.name, value)


class AuditTrail:
    def __init__(
        self,
        nc: Client,
        *,
        keys: RecordKeys,
        checkpoint_file: Path | None = None,
        stream: str = STREAM,
        prefix: str = PREFIX,
        replicas: int = 1,
        timeout: float = 5.0,
        append_deadline: float = 30.0,
        spool: AuditSpool | None = None,
        max_backlog: int = MAX_BACKLOG,
        on_spooled_stored: Callable[[list[AuditRecord]], None] | None = None,
        close_drain_s: float = CLOSE_DRAIN_S,
        spool_linger_s: float = SPOOL_LINGER_S,
        max_age_s: float = AUDIT_MAX_AGE_S,
        max_bytes: int = AUDIT_MAX_BYTES,
    ) -> None:
        self.store = AuditStream(nc, name=stream, prefix=prefix, replicas=replicas, timeout=timeout,
                                 max_age_s=max_age_s, max_bytes=max_bytes)
        self.writer = TrailWriter(self.store, keys=keys, append_deadline=append_deadline, spool=spool,
                                  max_backlog=max_backlog, on_spooled_stored=on_spooled_stored,
                                  close_drain_s=close_drain_s, spool_linger_s=spool_linger_s)
        self.checkpoints = Checkpoints(self.store, keys, checkpoint_file)
        self.reader = TrailReader(self.store, keys=keys, checkpoints=self.checkpoints, before_read=self.writer.flush)
        # write-behind append (TrailWriter.submit): every decision calls it, so no hop in between
        self.submit: Callable[[list[AuditRecord]], None] = self.writer.submit

    # the stream
    nc = _Forward[Client]("store")
    stream = _Forward[str]("store", "name")
    prefix = _Forward[str]("store")
    replicas = _Forward[int]("store")
    timeout = _Forward[float]("store")
    # the writer
    append_deadline = _Forward[float]("writer")
    spool = _Forward[AuditSpool | None]("writer")
    max_backlog = _Forward[int]("writer")
    close_drain_s = _Forward[float]("writer")
    spool_linger_s = _Forward[float]("writer")
    atomic_from = _Forward[int]("writer")
    on_spooled_stored = _Forward[Callable[[list[AuditRecord]], None] | None]("writer")
    appended = _Forward[int]("writer")
    conflicts = _Forward[int]("writer")
    write_failures = _Forward[int]("writer")

    # -- setup -----------------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        return self.store.config()

    async def ensure_stream(self) -> None:
        """Create the stream, or bring an existing one's replica count in line; and the checkpoints' bucket."""
        await self.store.ensure()
        await self.checkpoints.ensure()

    async def close(self) -> None:
        """Let the writer finish (the spool keeps what it could not append for the next start), then
        take the last checkpoint when they run at an interval."""
        try:
            await self.writer.close()
            await self.checkpoints.stop()
        finally:  # also when the stop's budget cut it off: no checkpoint interval outlives the trail
            self.checkpoints.cancel()

    # -- write -----------------------------------------------------------------------------

    async def append(self, record: AuditRecord) -> StoredRecord:
        """Link `record` to the chain and store it; returns once JetStream acknowledged it."""
        return await self.writer.append(record)

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        """Store records in order (consecutive in the chain unless another writer interleaves)."""
        return await self.writer.append_many(records)

    async def resume_spool(self) -> int:
        """Queue the records a previous run spooled but did not get into JetStream; how many."""
        return await self.writer.resume_spool()

    @property
    def backlog(self) -> int:
        """Spooled records not in JetStream yet."""
        return self.writer.backlog

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every spooled record of this process is in JetStream."""
        await self.writer.flush(timeout)

    # -- read ------------------------------------------------------------------------------

    async def list(self, filters: AuditFilters | None = None, limit: int = 100, after_seq: int = 0) -> AuditPage:
        """Records in chain order (oldest first) after `after_seq` that match `filters`."""
        return await self.reader.list(filters, limit, after_seq)

    async def list_newest(self, filters: AuditFilters | None = None, limit: int = 100,
                          before_seq: int | None = None) -> AuditPage:
        """Records newest first (before `before_seq` when given)."""
        return await self.reader.list_newest(filters, limit, before_seq)

    async def verify(self) -> VerifyReport:
        """Walk the whole stream: every record's hash, its link to the previous one, its subject."""
        return await self.reader.verify()
