"""The audit trail's read path: list records in chain order (either way) and verify the chain.

Reads first wait for this process's own queued records (the `before_read` hook: the writer's
`flush`), so a caller reads its own decisions. The source and decision filters are the subject
(`audit.<source>.<decision>`) and run in the server; the others run here on decoded records.
A read that JetStream does not answer is AuditUnavailable (503), never an empty page.

`verify` walks the whole stream (controlplane.audit.verify): every record's hash, its link to the
previous record, its subject, the absence of gaps, its signature, and the last signed checkpoint.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors

from controlplane.audit.checkpoints import Checkpoints
from controlplane.audit.errors import AuditQueryError, AuditUnavailable
from controlplane.audit.records import DECISIONS, SOURCES, AuditRecord, StoredRecord, record_time
from controlplane.audit.stream import AuditStream
from controlplane.audit.verify import VerifyReport, verify_stream
from controlplane.infra.directget import READ_BATCH
from controlplane.infra.recordkeys import RecordKeys

__all__ = ["AuditFilters", "AuditPage", "TrailReader", "VerifyReport"]

MAX_SCAN = 100_000  # records one list call examines before handing back a cursor

_decode = msgspec.json.Decoder(AuditRecord).decode


class AuditFilters(msgspec.Struct, kw_only=True):
    decision: str | None = None
    source: str | None = None
    policy_id: str | None = None
    evaluation_id: str | None = None
    decision_id: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, inclusive

    def subject(self, prefix: str) -> str:
        return f"{prefix}.{self.source or '*'}.{self.decision or '*'}"

    def check(self) -> None:
        """Refuse a source or decision the trail never files records under (400)."""
        for name, value, allowed in (("source", self.source, SOURCES), ("decision", self.decision, DECISIONS)):
            if value is not None and value not in allowed:
                raise AuditQueryError(f"{name}: {value!r} unknown (expected one of {', '.join(allowed)})")

    def matches(self, record: AuditRecord) -> bool:
        if self.policy_id and self.policy_id not in record.policy_ids:
            return False
        if self.evaluation_id and record.evaluation_id != self.evaluation_id and not any(
                e.evaluation_id == self.evaluation_id for e in record.evaluations):
            return False
        if self.decision_id and record.decision_id != self.decision_id:
            return False
        t = record_time(record)
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t > self.until:
            return False
        return True


class AuditPage(msgspec.Struct, kw_only=True):
    records: list[StoredRecord]
    next_after_seq: int | None = None  # oldest first: pass as after_seq for the next page; None at the end
    next_before_seq: int | None = None  # newest first: pass as before_seq for the next page; None at the start


async def _nothing_queued() -> None:
    return None


class TrailReader:
    def __init__(self, store: AuditStream, *, keys: RecordKeys, checkpoints: Checkpoints | None = None,
                 before_read: Callable[[], Awaitable[None]] = _nothing_queued) -> None:
        self.store = store
        self.keys = keys  # the trusted set signatures are checked against
        self.checkpoints = checkpoints
        self.before_read = before_read

    async def list(self, filters: AuditFilters | None = None, limit: int = 100, after_seq: int = 0) -> AuditPage:
        """Records in chain order (oldest first) after `after_seq` that match `filters`."""
        filters = filters or AuditFilters()
        filters.check()
        await self.before_read()
        out: builtins.list[StoredRecord] = []
        scanned = 0
        last = after_seq
        start_time = filters.since if after_seq == 0 else None
        try:
            async for seq, subject, data in self.store.scan(after_seq + 1, filters.subject(self.store.prefix), start_time):
                last = seq
                scanned += 1
                try:
                    record = _decode(data)
                except msgspec.DecodeError:
                    continue  # unreadable records are verify's business, not a listing's
                if filters.until is not None and record_time(record) > filters.until:
                    return AuditPage(records=out, next_after_seq=None)
                if filters.matches(record):
                    out.append(StoredRecord(seq=seq, subject=subject, record=record))
                    if len(out) >= limit:
                        return AuditPage(records=out, next_after_seq=seq)
                if scanned >= MAX_SCAN:
                    return AuditPage(records=out, next_after_seq=last)
        except (TimeoutError, nats.errors.Error) as exc:
            raise AuditUnavailable(f"audit trail: read failed ({exc!r})") from exc
        return AuditPage(records=out, next_after_seq=None)

    async def list_newest(self, filters: AuditFilters | None = None, limit: int = 100,
                          before_seq: int | None = None) -> AuditPage:
        """Records newest first (before `before_seq` when given): windows read backwards from the tail,
        each twice as wide as the one before."""
        filters = filters or AuditFilters()
        filters.check()
        await self.before_read()
        try:
            state = await self.store.state()
            first = max(1, state.first_seq)
            end = state.last_seq if before_seq is None else min(state.last_seq, before_seq - 1)
            out: builtins.list[StoredRecord] = []
            window, scanned = max(2 * limit, READ_BATCH), 0
            while end >= first and len(out) < limit and scanned < MAX_SCAN:
                start = max(first, end - window + 1)
                found, seen = await self._window(filters, start, end)
                scanned += seen
                out.extend(reversed(found))
                end, window = start - 1, window * 2
        except (TimeoutError, nats.errors.Error) as exc:
            raise AuditUnavailable(f"audit trail: read failed ({exc!r})") from exc
        out = out[:limit]
        more = (len(out) == limit and out[-1].seq > first) or (scanned >= MAX_SCAN and end >= first)
        return AuditPage(records=out, next_before_seq=(out[-1].seq if out else end + 1) if more else None)

    async def _window(self, filters: AuditFilters, start: int, end: int) -> tuple[builtins.list[StoredRecord], int]:
        """The matching records in start..end, oldest first, and how many records were examined."""
        found: builtins.list[StoredRecord] = []
        scanned = 0
        async for seq, subject, data in self.store.scan(start, filters.subject(self.store.prefix)):
            if seq > end:
                break
            scanned += 1
            try:
                record = _decode(data)
            except msgspec.DecodeError:
                continue
            if filters.matches(record):
                found.append(StoredRecord(seq=seq, subject=subject, record=record))
        return found, scanned

    async def verify(self) -> VerifyReport:
        """Walk the whole stream: hashes, links, subjects, sequences, signatures, the last checkpoint."""
        await self.before_read()
        return await verify_stream(self.store, self.keys, self.checkpoints)
