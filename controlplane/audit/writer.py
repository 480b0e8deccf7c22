"""The audit trail's write path: group commit, write-behind through the spool, retries until stored.

Within one process, appends are serialized through one queue and group-committed: whatever has
queued up goes out as one atomic batch linked to the stream's tail (controlplane.audit.publisher
explains why that cannot fork the chain). A batch that lost the race to another writer relinks to
the new tail and goes again; one whose answer never came is adopted if it landed
(controlplane.audit.adoption). Appending a record id stored in the last two minutes (a caller's
retry, an OPA agent re-uploading a batch) returns the stored copy; the server refuses an atomic
batch holding such a record (err_code 10201), and the writer then sends that batch one by one.
A short queue goes out one conditioned publish per record rather than as an atomic batch, which
costs nats-server far more (ATOMIC_FROM). Each publish is signed once, as it is sealed
(controlplane.audit.signing).

Write-behind (`submit`): the record is first written to the local spool (controlplane.audit.spool),
then queued like any other; the caller does not wait for JetStream. Such a record is never dropped:
a batch that fails goes back to the head of the queue and is retried until it lands, and one still
queued when the process stops is appended again from the spool at the next start. A backlog above
`max_backlog` refuses new records (503): decisions are not served faster than they can be recorded.
`flush` waits until this process's queue is empty, which is how reads see a caller's own decisions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import nats.errors

from controlplane.audit.adoption import LostAcks
from controlplane.audit.errors import AuditError, AuditRecordTooLarge, AuditUnavailable, SpoolError
from controlplane.audit.publisher import BatchPublisher, Outcome
from controlplane.audit.records import SOURCES, AuditRecord, StoredRecord, now_rfc3339, seal_chain
from controlplane.audit.signing import signer
from controlplane.audit.spool import AuditSpool
from controlplane.audit.stream import BATCH_HAS_DUPLICATE, WRONG_LAST_SEQUENCE, AuditStream, Rejected
from controlplane.infra.recordkeys import RecordKeys

log = logging.getLogger(__name__)

MAX_BATCH = 256  # records one atomic batch carries (the server allows up to 1000)
# Fewer pending records than this go out one conditioned publish each, more as atomic batches.
# nats-server stages each atomic batch of a file stream in a file store of its own, made and deleted
# per batch: that costs it as much CPU as a dozen or more single publishes, whatever the batch's
# size, and comes in bursts that delay the requests sharing its cores (benchmarks/README.md, "Audit
# appends"). Singles cost the writer a signature and a round trip each, so a long queue still goes
# out in batches, where the batch's cost is shared.
ATOMIC_FROM = 24
# Spooled records wait this long before the writer takes them: the response that the spool write
# let go first reaches its client before the writer and nats-server claim the CPU, and records
# arriving meanwhile share one drain of the queue. Not when the queue already holds SPOOL_LINGER_FULL
# evaluations: a batch request's record is one big append already, its client sends the next batch
# within the linger, and the deferred append would land on that batch.
SPOOL_LINGER_S = 0.002
SPOOL_LINGER_FULL = 64
MAX_BACKLOG = 100_000  # spooled records waiting for JetStream before new ones are refused
# Larger records are refused up front: NATS refuses messages above max_payload (1 MiB by default),
# and a record that can never be stored would block every record queued behind it.
MAX_RECORD_BYTES = 512 * 1024
CLOSE_DRAIN_S = 5.0  # a stop's wait for the queue (the spool keeps the rest); the stop's budget may cut it

# A queued record, with the future of the caller awaiting it (None: a spooled record, no one waits)
Queued = tuple[AuditRecord, asyncio.Future[StoredRecord] | None]


def check_source(record: AuditRecord) -> None:
    if record.source not in SOURCES:
        raise AuditError(f"audit record: source {record.source!r} unknown (expected one of {', '.join(SOURCES)})")


def check_size(record: AuditRecord, size: int) -> None:
    if size > MAX_RECORD_BYTES:
        what = (f"batch {record.batch_id} ({len(record.evaluations)} evaluations)" if record.evaluations
                else f"record {record.record_id}")
        raise AuditRecordTooLarge(f"audit record: {what} is {size} bytes, above the {MAX_RECORD_BYTES}-byte limit "
                                  "of one NATS message; the decision is not served")


@dataclass
class _Commit:
    """One group commit in progress: what is still to store, and what is stored."""

    pending: list[AuditRecord]
    out: list[StoredRecord] = field(default_factory=list)
    singles: int = 0  # records to publish one by one (a batch held a record already stored)
    attempt: int = 0  # attempts since the last records were stored: the retry backoff grows with it
    last_error: str = ""

    def adopted(self, records: list[StoredRecord]) -> None:
        """The first records of `pending` are stored."""
        self.out.extend(records)
        self.pending = self.pending[len(records):]
        self.attempt = 0

    def stored(self, records: list[StoredRecord]) -> None:
        """The first records of `pending` are stored by the last publish (one of them, when one by one)."""
        self.adopted(records)
        self.singles = max(0, self.singles - len(records))


class TrailWriter:
    def __init__(
        self,
        store: AuditStream,
        *,
        keys: RecordKeys,
        append_deadline: float = 30.0,
        spool: AuditSpool | None = None,
        max_backlog: int = MAX_BACKLOG,
        on_spooled_stored: Callable[[list[AuditRecord]], None] | None = None,
        close_drain_s: float = CLOSE_DRAIN_S,
        spool_linger_s: float = SPOOL_LINGER_S,
        atomic_from: int = ATOMIC_FROM,
    ) -> None:
        self.store = store
        self.keys = keys  # signs each commit (controlplane.audit.signing)
        self.publisher = BatchPublisher(store)
        self.lost_acks = LostAcks(store)
        self.append_deadline = append_deadline
        self.spool = spool
        self.max_backlog = max_backlog
        self.close_drain_s = close_drain_s
        self.spool_linger_s = spool_linger_s
        self.atomic_from = atomic_from
        self.on_spooled_stored = on_spooled_stored  # metrics: spooled records once JetStream has them
        self._tail: tuple[int, str] | None = None  # (seq, hash) of the stream's last record, as far as we know
        self._queue: list[Queued] = []
        self._spooled = 0  # spooled records not acknowledged yet (queued or in flight)
        self._spool_idle = asyncio.Event()
        self._spool_idle.set()
        self._closing = False
        self._drainer: asyncio.Task[None] | None = None
        self.write_failures = 0
        self.appended = 0
        self.conflicts = 0

    # -- taking records ------------------------------------------------------------------------

    async def append(self, record: AuditRecord) -> StoredRecord:
        """Link `record` to the chain and store it; returns once JetStream acknowledged it."""
        return (await self.append_many([record]))[0]

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        """Store records in order (consecutive in the chain unless another writer interleaves)."""
        for r in records:
            check_source(r)
            check_size(r, len(msgspec.json.encode(r)))
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[StoredRecord]] = [loop.create_future() for _ in records]
        self._queue.extend(zip(records, futures, strict=True))
        self._start()
        return list(await asyncio.gather(*futures))

    def submit(self, records: list[AuditRecord]) -> None:
        """Write-behind append: the records are in the spool when this returns, in JetStream soon
        after. Raises AuditUnavailable (nothing written) when the spool cannot take them or the
        backlog is full."""
        if self.spool is None:
            raise AuditError("audit trail: write-behind appends need a spool (GROQPOLICY_AUDIT_DURABILITY=spool)")
        for r in records:
            check_source(r)
        if self._closing:
            raise AuditUnavailable("audit trail: shutting down, not taking new records")
        if self._spooled + len(records) > self.max_backlog:
            raise AuditUnavailable(f"audit trail: {self._spooled} record(s) are waiting for JetStream "
                                   f"(limit {self.max_backlog}); not serving decisions that cannot be recorded")
        stamp = now_rfc3339()
        stamped = [r if r.timestamp else msgspec.structs.replace(r, timestamp=stamp) for r in records]
        encoded: list[bytes] = []
        for r in stamped:
            e = msgspec.json.encode(r)
            check_size(r, len(e))
            encoded.append(e)
        try:
            self.spool.write_encoded(encoded)
        except SpoolError as exc:  # nothing was written
            raise AuditUnavailable(exc.message) from exc
        self._enqueue_spooled(stamped)

    def _enqueue_spooled(self, records: list[AuditRecord]) -> None:
        self._queue.extend((r, None) for r in records)
        self._spooled += len(records)
        self._spool_idle.clear()
        if self._drainer is None or self._drainer.done():  # spelled out: this runs for every decision
            self._drainer = asyncio.create_task(self._drain(), name="audit-writer")

    def _start(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="audit-writer")

    async def resume_spool(self) -> int:
        """Queue the records a previous run spooled but did not get into JetStream; how many.

        Records whose id is already among the stream's newest ones (acknowledged just before a
        crash, cursor not yet moved) are acknowledged in the spool instead of appended twice."""
        if self.spool is None:
            return 0
        try:
            records = self.spool.recover()
        except OSError as exc:
            raise AuditError(str(exc)) from exc
        if not records:
            return 0
        stored_ids = await self.store.newest_ids(min(len(records), 1000))
        present = 0
        while present < len(records) and records[present].record_id in stored_ids:
            present += 1
        self.spool.acknowledge(present)
        if present < len(records):
            self._enqueue_spooled(records[present:])
        log.info("audit trail: %d spooled record(s) from the last run: %d already stored, %d queued",
                 len(records), present, len(records) - present)
        return len(records) - present

    @property
    def backlog(self) -> int:
        """Spooled records not in JetStream yet."""
        return self._spooled

    def backlog_wait_s(self) -> float:
        """How long the oldest spooled record has waited for JetStream (0 when none waits)."""
        return self.spool.oldest_wait_s() if self.spool is not None else 0.0

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every spooled record of this process is in JetStream."""
        if self._spooled == 0:
            return
        try:
            await asyncio.wait_for(self._spool_idle.wait(), self.store.timeout if timeout is None else timeout)
        except TimeoutError as exc:
            raise AuditUnavailable(f"audit trail: {self._spooled} record(s) still waiting for JetStream") from exc

    async def close(self) -> None:
        """Let the writer finish within `close_drain_s` (or until cancelled); the rest stays in the spool."""
        self._closing = True
        drainer = self._drainer
        try:
            if drainer is not None and not drainer.done():
                await asyncio.wait({drainer}, timeout=self.close_drain_s)
        finally:  # also when cancelled: the drainer stops (at its next step), the spool is closed
            if drainer is not None and not drainer.done():
                drainer.cancel()
                await asyncio.wait({drainer}, timeout=1.0)
            if self._spooled:
                log.warning("audit trail: %d spooled record(s) not appended at stop; they stay in the spool", self._spooled)
            if self.spool is not None:
                self.spool.close()
            await self.publisher.close()

    # -- the queue -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        failures = 0
        while self._queue:
            if self.spool_linger_s and not self._closing and self._worth_lingering():
                await asyncio.sleep(self.spool_linger_s)
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                stored = await self._write([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - whatever failed, no caller may be left waiting
                # every waiting caller learns it was not recorded; spooled records go back to the queue
                if not self._failed(batch, exc):
                    continue
                failures += 1
                self.write_failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("audit trail: %d spooled record(s) wait for JetStream (attempt %d: %s)",
                                self._spooled, failures, exc)
                if self._closing:
                    return
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
                continue
            failures = 0
            self._stored(batch, stored)

    def _failed(self, batch: list[Queued], exc: Exception) -> bool:
        """Fail the awaiting callers of a batch that could not be stored; put its spooled records back
        at the head of the queue, in order (they are never dropped). Whether there were any."""
        for _, fut in batch:
            if fut is not None and not fut.done():
                err = exc if isinstance(exc, AuditError) else AuditUnavailable(f"audit trail: append failed ({exc!r})")
                if err is not exc:
                    err.__cause__ = exc
                fut.set_exception(err)
        spooled = [(r, f) for r, f in batch if f is None]
        self._queue[:0] = spooled
        return bool(spooled)

    def _stored(self, batch: list[Queued], stored: list[StoredRecord]) -> None:
        """A batch is in JetStream: move the spool's cursor past its spooled records, answer its callers."""
        spooled_done = [r for (r, f) in batch if f is None]
        if spooled_done:
            assert self.spool is not None
            try:
                self.spool.acknowledge(len(spooled_done))
            except (OSError, SpoolError) as exc:  # the cursor could not move (a full disk): they may be re-sent at restart
                log.warning("audit spool: cursor not updated (%s); records may be re-sent after a restart", exc)
            self._spooled -= len(spooled_done)
            if self._spooled == 0:
                self._spool_idle.set()
            if self.on_spooled_stored is not None:
                try:
                    self.on_spooled_stored(spooled_done)
                except Exception:
                    log.exception("audit trail: on_spooled_stored hook failed")
        for (_, fut), s in zip(batch, stored, strict=True):
            if fut is not None and not fut.done():
                fut.set_result(s)

    def _worth_lingering(self) -> bool:
        """Only spooled records (no caller awaits them), fewer than SPOOL_LINGER_FULL evaluations."""
        evaluations = 0
        for record, fut in self._queue:
            if fut is not None:
                return False
            evaluations += len(record.evaluations) or 1
            if evaluations >= SPOOL_LINGER_FULL:
                return False
        return True

    # -- one group commit ----------------------------------------------------------------------

    async def _write(self, records: list[AuditRecord]) -> list[StoredRecord]:
        """Store records in order, relinking and retrying until stored or `append_deadline` passed."""
        # the timestamp is fixed once, so every attempt seals a record the same way after the same tail
        stamp = now_rfc3339()
        commit = _Commit([r if r.timestamp else msgspec.structs.replace(r, timestamp=stamp) for r in records])
        deadline = time.monotonic() + self.append_deadline
        while commit.pending:
            if time.monotonic() > deadline:
                raise AuditUnavailable(f"audit trail: {len(commit.pending)} record(s) not acknowledged within "
                                       f"{self.append_deadline:.0f}s ({commit.last_error})")
            if commit.attempt:
                await asyncio.sleep(min(0.5, 0.01 * 2 ** min(commit.attempt, 6)) * (0.5 + random.random()))
            commit.attempt += 1
            try:
                sent = await self._attempt(commit)
            except (TimeoutError, nats.errors.Error, OSError, Rejected) as exc:
                commit.last_error = repr(exc)
                log.debug("audit append attempt %d: %r", commit.attempt, exc)
                self._tail = None
                continue
            if sent is not None:
                await self._settle(commit, *sent)
        return commit.out

    async def _attempt(self, commit: _Commit) -> tuple[list[tuple[AuditRecord, bytes]], int, Outcome] | None:
        """Adopt what an unanswered earlier attempt stored (None), or publish the next chunk:
        (the sealed chunk, the sequence it was conditioned on, the outcome)."""
        if self._tail is None:
            self._tail = await self.store.tail()
        seq, prev = self._tail
        if commit.pending[0].record_id in self.lost_acks:
            landed = await self.lost_acks.adopt(commit.pending, seq)
            if landed:  # an earlier attempt whose answer we never got did commit
                commit.adopted(landed)
                self.appended += len(landed)
                self._tail = None
                return None
        # one record per publish (each conditioned on the last sequence, so the chain cannot fork),
        # or an atomic batch when the queue is long (ATOMIC_FROM)
        size = 1 if commit.singles or len(commit.pending) < self.atomic_from else MAX_BATCH
        records = commit.pending[:size]
        # conditioned on `seq`, the chunk lands at seq+1.. or not at all: its signature can say where
        chunk = seal_chain(records, prev, signer(self.keys, self.store.name, seq + 1, seq + len(records)))
        return chunk, seq, await self.publisher.publish(chunk, seq)

    async def _settle(self, commit: _Commit, chunk: list[tuple[AuditRecord, bytes]], seq: int, result: Outcome) -> None:
        """Take in what one publish ended in."""
        if isinstance(result, dict) and result.get("duplicate"):
            # stored before under this record id (a retry of an acknowledged append): that copy stands
            commit.stored([await self.store.get(int(result["seq"]))])
            self._tail = None
            return
        if isinstance(result, dict):
            first = int(result["seq"]) - len(chunk) + 1
            subject = self.store.subject
            stored = [StoredRecord(seq=first + i, subject=subject(rec), record=rec) for i, (rec, _) in enumerate(chunk)]
            commit.stored(stored)
            self._tail = (stored[-1].seq, stored[-1].record.hash)
            self.lost_acks.settled(chunk[0][0].record_id)
            self.appended += len(stored)
            return
        self._tail = None
        commit.last_error = repr(result)
        if isinstance(result, Rejected) and result.err_code == WRONG_LAST_SEQUENCE:
            self.conflicts += 1  # another writer got there first: relink to the new tail
        elif isinstance(result, Rejected) and result.err_code == BATCH_HAS_DUPLICATE:
            commit.singles = len(chunk)  # find which one, one at a time
        elif not isinstance(result, Rejected) or result.code >= 500 or result.code == 0:
            # no answer: the batch may still commit, at exactly seq+1.., since it was conditioned on seq
            self.lost_acks.unanswered(chunk[0][0].record_id, seq)
        log.debug("audit append attempt %d: %r", commit.attempt, result)
