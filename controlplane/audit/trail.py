"""The audit trail on JetStream: serialized, hash-chained appends and chain-ordered reads.

Why appends cannot fork the chain: every publish carries `Nats-Expected-Last-Sequence` = the
stream sequence of the record it links to. JetStream stores it only if that is still the stream's
last message; a replica that lost the race gets `wrong last sequence` (err_code 10071), reloads
the tail and relinks.

Within one process, concurrent `append` calls are group-committed: whatever has queued up goes
out as one JetStream *atomic batch* (nats-server 2.12+), conditioned as a whole on the last
sequence, so N concurrent appends cost one round trip and a batch is stored entirely or not at all.
(Pipelining single publishes is not safe: with record i refused, record i+1 could land right after
another writer's record while linking to the refused one. `Nats-Expected-Last-Msg-Id` would catch
that on one server, but a clustered stream checks it only when applying the entry and a mismatch
there is a critical write error that stops the stream replica: both were seen in tests.)

A publish whose answer never came (leader change, reconnect) may still commit, but only at
exactly last+1: before relinking, the trail reads that sequence and adopts the batch if it is
there. So a lost ack neither loses the records nor stores them twice. Each record also carries
`Nats-Msg-Id` = its record id: appending a record id stored in the last two minutes (a caller's
retry, an OPA agent re-uploading a batch) returns the stored copy; the server refuses an atomic
batch holding such a record (err_code 10201), and the trail then sends that batch one by one.

Write-behind (`submit`): the record is first written to the local spool (controlplane.audit.spool),
then queued like any other; the caller does not wait for JetStream. Such a record is never dropped:
a batch that fails goes back to the head of the queue and is retried until it lands, and one still
queued when the process stops is appended again from the spool at the next start. Reads (`list`,
`list_newest`, `verify`) first wait until this process's queue is empty, so a caller reads its own
decisions. A backlog above `max_backlog` refuses new records (503): decisions are not served
faster than they can be recorded.

Reads use JetStream's batched direct get (`$JS.API.DIRECT.GET.<stream>` with `batch` and
`next_by_subj`): stateless, no consumer to create. Records live under `audit.<source>.<decision>`
so the source and decision filters run in the server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from bridge.kernel.errors import GroqPolicyError
from controlplane.audit.records import (
    DECISIONS,
    GENESIS_HASH,
    SOURCES,
    AuditRecord,
    StoredRecord,
    check_stored,
    now_rfc3339,
    record_time,
    seal,
)
from controlplane.audit.spool import AuditSpool, SpoolError

log = logging.getLogger(__name__)

STREAM = "GROQPOLICY_AUDIT"
PREFIX = "audit"
WRONG_LAST_SEQUENCE = 10071
BATCH_HAS_DUPLICATE = 10201  # "atomic publish batch contains duplicate message id"
NO_MESSAGE_FOUND = 10037
READ_BATCH = 256
MAX_SCAN = 100_000  # records one list call examines before handing back a cursor
MAX_BATCH = 256  # records one atomic batch carries (the server allows up to 1000)
# Spooled records wait this long before the writer takes them: the response that the spool write
# let go first reaches its client before the writer and nats-server claim the CPU, and records
# arriving meanwhile share one append. Not when the queue already holds SPOOL_LINGER_FULL
# evaluations (a batch request's record is one big append already; its client sends the next batch
# within the linger, and the deferred append would land on that batch: -10-20% batch throughput).
SPOOL_LINGER_S = 0.002
SPOOL_LINGER_FULL = 64
MAX_BACKLOG = 100_000  # spooled records waiting for JetStream before new ones are refused
# Larger records are refused up front: NATS refuses messages above max_payload (1 MiB by default),
# and a record that can never be stored would block every record queued behind it.
MAX_RECORD_BYTES = 512 * 1024
CLOSE_DRAIN_S = 10.0  # how long a stop waits for the queue to empty (the spool keeps the rest)


class AuditError(GroqPolicyError):
    status = 500


class AuditUnavailable(AuditError):
    """JetStream did not acknowledge: the decision is not recorded, so it must not be served."""

    status = 503


class AuditRecordTooLarge(AuditError):
    """A record too large for a NATS message: the decision it records is not served."""

    status = 500


class AuditQueryError(AuditError):
    """A filter the trail cannot apply."""

    status = 400


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


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int
    first_seq: int
    last_seq: int
    last_hash: str
    bad: int = 0
    first_bad_seq: int | None = None
    reason: str = ""


class AuditPage(msgspec.Struct, kw_only=True):
    records: list[StoredRecord]
    next_after_seq: int | None = None  # oldest first: pass as after_seq for the next page; None at the end
    next_before_seq: int | None = None  # newest first: pass as before_seq for the next page; None at the start


class _Rejected(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"code={code} err_code={err_code} {description}")
        self.code = code
        self.err_code = err_code


def _check_source(record: AuditRecord) -> None:
    if record.source not in SOURCES:
        raise AuditError(f"audit record: source {record.source!r} unknown (expected one of {', '.join(SOURCES)})")


def _check_size(record: AuditRecord, size: int) -> None:
    if size > MAX_RECORD_BYTES:
        what = f"batch {record.batch_id} ({len(record.evaluations)} evaluations)" if record.evaluations else f"record {record.record_id}"
        raise AuditRecordTooLarge(f"audit record: {what} is {size} bytes, above the {MAX_RECORD_BYTES}-byte limit "
                                  "of one NATS message; the decision is not served")


def _status(msg: Msg) -> str:
    return (msg.headers or {}).get("Status", "") if msg.headers else ""


class AuditTrail:
    def __init__(
        self,
        nc: NATS,
        *,
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
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.prefix = prefix
        self.replicas = replicas
        self.timeout = timeout
        self.append_deadline = append_deadline
        self._tail: tuple[int, str] | None = None  # (seq, hash) of the stream's last record, as far as we know
        # first record id of a batch sent without an answer -> the sequences those sends were conditioned on
        self._unknown: dict[str, set[int]] = {}
        self.spool = spool
        self.max_backlog = max_backlog
        self.close_drain_s = close_drain_s
        self.spool_linger_s = spool_linger_s
        self.on_spooled_stored = on_spooled_stored  # metrics: spooled records once JetStream has them
        # (record, future of an awaiting caller | None for a spooled record)
        self._queue: list[tuple[AuditRecord, asyncio.Future | None]] = []
        self._spooled = 0  # spooled records not acknowledged yet (queued or in flight)
        self._spool_idle = asyncio.Event()
        self._spool_idle.set()
        self._closing = False
        self.write_failures = 0
        self._writer: asyncio.Task | None = None
        self._acks: dict[str, asyncio.Future] = {}
        self._ack_prefix = ""
        self._ack_sub = None
        self._counter = 0
        self.appended = 0
        self.conflicts = 0

    # -- setup -----------------------------------------------------------------------------

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.stream,
            description="groqpolicy audit trail: hash-chained decision records",
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            duplicate_window=120.0,  # a record id appended again within 2 min returns the stored copy
            allow_direct=True,
            allow_atomic=True,  # a group commit is one atomic batch (nats-server 2.12+)
            deny_delete=True,  # a record cannot be removed through the API...
            deny_purge=True,  # ...nor the stream emptied
        )

    async def ensure_stream(self) -> None:
        """Create the stream, or bring an existing one's replica count in line."""
        js = self.nc.jetstream(timeout=self.timeout)
        config = self.stream_config()
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(config)
            log.info("audit stream %s created (replicas=%d)", self.stream, self.replicas)
            return
        if info.config.num_replicas != self.replicas or not info.config.allow_atomic:
            await js.update_stream(config)
            log.info("audit stream %s: replicas %s -> %d", self.stream, info.config.num_replicas, self.replicas)

    async def close(self) -> None:
        """Let the writer finish (at most CLOSE_DRAIN_S while JetStream is unreachable; spooled
        records it could not append stay in the spool for the next start)."""
        self._closing = True
        if self._writer is not None and not self._writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), self.close_drain_s)
            except TimeoutError:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
                log.warning("audit trail: %d spooled record(s) not appended at stop; they stay in the spool", self._spooled)
        if self.spool is not None:
            self.spool.close()
        if self._ack_sub is not None:
            try:
                await self._ack_sub.unsubscribe()
            except nats.errors.Error:
                pass
            self._ack_sub = None

    # -- append ----------------------------------------------------------------------------

    async def append(self, record: AuditRecord) -> StoredRecord:
        """Link `record` to the chain and store it; returns once JetStream acknowledged it."""
        return (await self.append_many([record]))[0]

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        """Store records in order (consecutive in the chain unless another writer interleaves)."""
        for r in records:
            _check_source(r)
            _check_size(r, len(msgspec.json.encode(r)))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in records]
        self._queue.extend(zip(records, futures))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="audit-writer")
        return list(await asyncio.gather(*futures))

    def submit(self, records: list[AuditRecord]) -> None:
        """Write-behind append: the records are in the spool when this returns, in JetStream soon
        after. Raises AuditUnavailable (nothing written) when the spool cannot take them or the
        backlog is full."""
        if self.spool is None:
            raise AuditError("audit trail: write-behind appends need a spool (GROQPOLICY_AUDIT_DURABILITY=spool)")
        for r in records:
            _check_source(r)
        if self._closing:
            raise AuditUnavailable("audit trail: shutting down, not taking new records")
        if self._spooled + len(records) > self.max_backlog:
            raise AuditUnavailable(f"audit trail: {self._spooled} record(s) are waiting for JetStream (limit {self.max_backlog}); "
                                   f"not serving decisions that cannot be recorded")
        stamp = now_rfc3339()
        stamped = [r if r.timestamp else msgspec.structs.replace(r, timestamp=stamp) for r in records]
        encoded = [msgspec.json.encode(r) for r in stamped]
        for r, e in zip(stamped, encoded):
            _check_size(r, len(e))
        try:
            self.spool.write_encoded(encoded)
        except SpoolError as exc:
            raise AuditUnavailable(str(exc)) from None
        self._enqueue_spooled(stamped)

    def _enqueue_spooled(self, records: list[AuditRecord]) -> None:
        self._queue.extend((r, None) for r in records)
        self._spooled += len(records)
        self._spool_idle.clear()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="audit-writer")

    async def resume_spool(self) -> int:
        """Queue the records a previous run spooled but did not get into JetStream; how many.

        Records whose id is already among the stream's newest ones (acknowledged just before a
        crash, cursor not yet moved) are acknowledged in the spool instead of appended twice."""
        if self.spool is None:
            return 0
        try:
            records = self.spool.recover()
        except (SpoolError, OSError) as exc:
            raise AuditError(str(exc)) from None
        if not records:
            return 0
        stored_ids = await self._newest_ids(min(len(records), 1000))
        present = 0
        while present < len(records) and records[present].record_id in stored_ids:
            present += 1
        self.spool.acknowledge(present)
        if present < len(records):
            self._enqueue_spooled(records[present:])
        log.info("audit trail: %d spooled record(s) from the last run: %d already stored, %d queued",
                 len(records), present, len(records) - present)
        return len(records) - present

    async def _newest_ids(self, count: int) -> set[str]:
        state = (await self.nc.jetstream(timeout=self.timeout).stream_info(self.stream)).state
        if not state.messages:
            return set()
        ids: set[str] = set()
        async for seq, _, data in self._scan(max(state.first_seq, state.last_seq - count + 1), f"{self.prefix}.>"):
            if seq > state.last_seq:
                break
            try:
                ids.add(msgspec.json.decode(data, type=AuditRecord).record_id)
            except msgspec.DecodeError:
                continue
        return ids

    @property
    def backlog(self) -> int:
        """Spooled records not in JetStream yet."""
        return self._spooled

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every spooled record of this process is in JetStream."""
        if self._spooled == 0:
            return
        try:
            await asyncio.wait_for(self._spool_idle.wait(), self.timeout if timeout is None else timeout)
        except TimeoutError:
            raise AuditUnavailable(f"audit trail: {self._spooled} record(s) still waiting for JetStream") from None

    async def _drain(self) -> None:
        failures = 0
        while self._queue:
            if self.spool_linger_s and not self._closing and self._worth_lingering():
                await asyncio.sleep(self.spool_linger_s)
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                stored = await self._write([r for r, _ in batch])
            except Exception as exc:  # every waiting caller learns it was not recorded
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc if isinstance(exc, AuditError) else AuditUnavailable(f"audit trail: append failed ({exc!r})"))
                spooled = [(r, f) for r, f in batch if f is None]
                if spooled:  # never dropped: back to the head of the queue, in order
                    self._queue[:0] = spooled
                    failures += 1
                    self.write_failures += 1
                    if failures == 1 or failures % 20 == 0:
                        log.warning("audit trail: %d spooled record(s) wait for JetStream (attempt %d: %s)", self._spooled, failures, exc)
                    if self._closing:
                        return
                    await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
                continue
            failures = 0
            spooled_done = [r for (r, f) in batch if f is None]
            if spooled_done:
                assert self.spool is not None
                try:
                    self.spool.acknowledge(len(spooled_done))
                except OSError as exc:  # the cursor could not move: those records may be appended again at restart
                    log.warning("audit spool: cursor not updated (%s); records may be re-sent after a restart", exc)
                self._spooled -= len(spooled_done)
                if self._spooled == 0:
                    self._spool_idle.set()
                if self.on_spooled_stored is not None:
                    try:
                        self.on_spooled_stored(spooled_done)
                    except Exception:
                        log.exception("audit trail: on_spooled_stored hook failed")
            for (_, fut), s in zip(batch, stored):
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

    async def _write(self, records: list[AuditRecord]) -> list[StoredRecord]:
        out: list[StoredRecord] = []
        # the timestamp is fixed once, so every attempt seals a record the same way after the same tail
        stamp = now_rfc3339()
        pending = [r if r.timestamp else msgspec.structs.replace(r, timestamp=stamp) for r in records]
        deadline = time.monotonic() + self.append_deadline
        attempt = 0
        last_error = ""
        singles = 0  # records to publish one by one (a batch held a record already stored)
        while pending:
            if time.monotonic() > deadline:
                raise AuditUnavailable(f"audit trail: {len(pending)} record(s) not acknowledged within {self.append_deadline:.0f}s ({last_error})")
            if attempt:
                await asyncio.sleep(min(0.5, 0.01 * 2 ** min(attempt, 6)) * (0.5 + random.random()))
            attempt += 1
            try:
                if self._tail is None:
                    self._tail = await self._load_tail()
                seq, prev = self._tail
                if pending[0].record_id in self._unknown:
                    landed = await self._resolve_unknown(pending, seq)
                    if landed:  # an earlier attempt whose answer we never got did commit
                        out.extend(landed)
                        pending = pending[len(landed):]
                        self._tail = None
                        continue
                chunk = []
                for r in pending[:1 if singles else MAX_BATCH]:
                    rec, data = seal(r, prev)
                    chunk.append((rec, data))
                    prev = rec.hash
                result = await self._publish_batch(chunk, seq)
            except (TimeoutError, nats.errors.Error, OSError, _Rejected) as exc:
                last_error = repr(exc)
                log.debug("audit append attempt %d: %r", attempt, exc)
                self._tail = None
                continue
            if isinstance(result, dict) and result.get("duplicate"):
                # stored before under this record id (a retry of an acknowledged append): that copy stands
                out.append(await self._get(int(result["seq"])))
                pending = pending[1:]
                singles = max(0, singles - 1)
                self._tail = None
                continue
            if isinstance(result, dict):
                first = int(result["seq"]) - len(chunk) + 1
                singles = max(0, singles - len(chunk))
                stored = [StoredRecord(seq=first + i, subject=self._subject(rec), record=rec) for i, (rec, _) in enumerate(chunk)]
                out.extend(stored)
                self._tail = (stored[-1].seq, stored[-1].record.hash)
                self._unknown.pop(chunk[0][0].record_id, None)  # a batch conditioned on an older tail cannot land now
                self.appended += len(stored)
                pending = pending[len(chunk):]
                continue
            self._tail = None
            last_error = repr(result)
            if isinstance(result, _Rejected) and result.err_code == WRONG_LAST_SEQUENCE:
                self.conflicts += 1  # another writer got there first: relink to the new tail
            elif isinstance(result, _Rejected) and result.err_code == BATCH_HAS_DUPLICATE:
                singles = len(chunk)  # find which one, one at a time
            elif not isinstance(result, _Rejected) or result.code >= 500 or result.code == 0:
                # no answer: the batch may still commit, at exactly seq+1.., since it was conditioned on seq
                self._unknown.setdefault(chunk[0][0].record_id, set()).add(seq)
            log.debug("audit append attempt %d: %r", attempt, result)
        return out

    async def _resolve_unknown(self, pending: list[AuditRecord], tail: int) -> list[StoredRecord]:
        """Did a batch starting with pending[0], sent without an answer, commit after all?

        Such a batch was conditioned on a base sequence, so it can only sit at base+1... Only bases the
        stream has moved past are looked at; the others may still commit, and the next publish (on the
        current tail) settles them: it succeeds (then they never can) or conflicts (then look again).
        """
        first_id = pending[0].record_id
        bases = self._unknown.get(first_id, set())
        for base in sorted(b for b in bases if b < tail):
            resp = await self._api(f"$JS.API.STREAM.MSG.GET.{self.stream}", {"seq": base + 1})
            if "error" in resp:
                continue
            _, first, _ = check_stored(base64.b64decode(resp["message"].get("data", "")), None)
            if first is None or first.record_id != first_id:
                continue
            # ours: the batch is atomic, so the rest follows it; read the stored copies (they are the truth)
            landed: list[StoredRecord] = []
            async for seq, subject, data in self._scan(base + 1, f"{self.prefix}.>"):
                _, rec, _ = check_stored(data, None)
                i = len(landed)
                if rec is None or i >= len(pending) or rec.record_id != pending[i].record_id or seq != base + 1 + i:
                    break
                landed.append(StoredRecord(seq=seq, subject=subject, record=rec))
            if landed:
                del self._unknown[first_id]
                self.appended += len(landed)
                return landed
        remaining = {b for b in bases if b >= tail}  # the others can never commit any more
        if remaining:
            self._unknown[first_id] = remaining
        else:
            self._unknown.pop(first_id, None)
        return []

    def _subject(self, record: AuditRecord) -> str:
        return f"{self.prefix}.{record.source}.{record.subject_decision}"

    async def _ensure_ack_sub(self) -> None:
        if self._ack_sub is None:
            self._ack_prefix = self.nc.new_inbox()
            self._ack_sub = await self.nc.subscribe(self._ack_prefix + ".*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._acks.pop(msg.subject.rsplit(".", 1)[-1], None)
        if fut is None or fut.done():
            return
        status = _status(msg)
        if status:
            fut.set_result(_Rejected(int(status), 0, f"no JetStream stream answered ({status})"))
            return
        try:
            resp = json.loads(msg.data)
        except ValueError:
            fut.set_result(_Rejected(0, 0, f"unreadable ack {msg.data[:80]!r}"))
            return
        if "error" in resp:
            err = resp["error"]
            fut.set_result(_Rejected(int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description", ""))))
        else:
            fut.set_result(resp)

    async def _publish_batch(self, sealed: list[tuple[AuditRecord, bytes]], last_seq: int) -> object:
        """Publish records as one atomic batch conditioned on the stream's last sequence; the ack or error."""
        await self._ensure_ack_sub()
        self._counter += 1
        token = str(self._counter)
        fut = asyncio.get_running_loop().create_future()
        self._acks[token] = fut
        reply = f"{self._ack_prefix}.{token}"
        try:
            if len(sealed) == 1:
                rec, data = sealed[0]
                headers = {"Nats-Expected-Stream": self.stream, "Nats-Expected-Last-Sequence": str(last_seq),
                           "Nats-Msg-Id": rec.record_id}
                await self.nc.publish(self._subject(rec), data, reply=reply, headers=headers)
            else:
                batch_id = f"{sealed[0][0].record_id}-{token}"
                for i, (rec, data) in enumerate(sealed, 1):
                    headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i), "Nats-Msg-Id": rec.record_id}
                    if i == 1:
                        headers["Nats-Expected-Stream"] = self.stream
                        headers["Nats-Expected-Last-Sequence"] = str(last_seq)
                    if i == len(sealed):
                        headers["Nats-Batch-Commit"] = "1"
                    await self.nc.publish(self._subject(rec), data, reply=reply if i == len(sealed) else "", headers=headers)
            try:
                return await asyncio.wait_for(fut, self.timeout)
            except TimeoutError:
                return nats.errors.TimeoutError()
        finally:
            self._acks.pop(token, None)

    async def _load_tail(self) -> tuple[int, str]:
        resp = await self._api(f"$JS.API.STREAM.MSG.GET.{self.stream}", {"last_by_subj": f"{self.prefix}.>"})
        if "error" in resp:
            err = resp["error"]
            if err.get("err_code") == NO_MESSAGE_FOUND:
                info = await self.nc.jetstream(timeout=self.timeout).stream_info(self.stream)
                if info.state.messages:  # someone appended between the two calls: read again
                    raise _Rejected(409, WRONG_LAST_SEQUENCE, "stream changed while reading its tail")
                return info.state.last_seq, GENESIS_HASH
            raise _Rejected(int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description", "")))
        m = resp["message"]
        data = base64.b64decode(m.get("data", ""))
        h, _, _ = check_stored(data, None)
        # a corrupt tail still gets a successor linked to the hash it states; verify reports it
        return int(m["seq"]), h or hashlib.sha256(data).hexdigest()

    async def _api(self, subject: str, body: dict) -> dict:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=self.timeout)
        if _status(msg) == "503":
            raise AuditUnavailable(f"audit trail: JetStream not available ({subject})")
        return json.loads(msg.data)

    async def _get(self, seq: int) -> StoredRecord:
        resp = await self._api(f"$JS.API.STREAM.MSG.GET.{self.stream}", {"seq": seq})
        if "error" in resp:
            raise _Rejected(int(resp["error"].get("code", 0)), int(resp["error"].get("err_code", 0)), str(resp["error"].get("description", "")))
        m = resp["message"]
        _, record, reason = check_stored(base64.b64decode(m.get("data", "")), None)
        if record is None:
            raise AuditError(f"audit record {seq}: {reason}")
        return StoredRecord(seq=int(m["seq"]), subject=m["subject"], record=record)

    # -- read ------------------------------------------------------------------------------

    async def _scan(self, start_seq: int, subject: str, start_time: float | None = None):
        """Yield (seq, subject, data) in stream order from start_seq, batch by batch."""
        seq = max(1, start_seq)
        first = True
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            while True:
                body: dict = {"batch": READ_BATCH, "next_by_subj": subject}
                if first and start_time is not None:
                    body["start_time"] = datetime.fromtimestamp(start_time, UTC).isoformat().replace("+00:00", "Z")
                else:
                    body["seq"] = seq
                first = False
                await self.nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", json.dumps(body).encode(), reply=inbox)
                got = 0
                while True:
                    msg = await sub.next_msg(timeout=self.timeout)
                    status = _status(msg)
                    if status == "204":  # end of batch
                        break
                    if status == "404":  # nothing (more) at or after seq
                        return
                    if status:
                        raise AuditUnavailable(f"audit trail: direct get answered {status} {(msg.headers or {}).get('Description', '')}".strip())
                    got += 1
                    s = int(msg.headers["Nats-Sequence"])
                    seq = s + 1
                    yield s, msg.headers.get("Nats-Subject", ""), msg.data
                if got == 0:
                    return
        finally:
            await sub.unsubscribe()

    @staticmethod
    def _check_filters(filters: AuditFilters) -> None:
        for name, value, allowed in (("source", filters.source, SOURCES), ("decision", filters.decision, DECISIONS)):
            if value is not None and value not in allowed:
                raise AuditQueryError(f"{name}: {value!r} unknown (expected one of {', '.join(allowed)})")

    async def list(self, filters: AuditFilters | None = None, limit: int = 100, after_seq: int = 0) -> AuditPage:
        """Records in chain order (oldest first) after `after_seq` that match `filters`."""
        filters = filters or AuditFilters()
        self._check_filters(filters)
        await self.flush()
        out: list[StoredRecord] = []
        scanned = 0
        last = after_seq
        start_time = filters.since if after_seq == 0 else None
        try:
            async for seq, subject, data in self._scan(after_seq + 1, filters.subject(self.prefix), start_time):
                last = seq
                scanned += 1
                try:
                    record = msgspec.json.decode(data, type=AuditRecord)
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
            raise AuditUnavailable(f"audit trail: read failed ({exc!r})") from None
        return AuditPage(records=out, next_after_seq=None)

    async def list_newest(self, filters: AuditFilters | None = None, limit: int = 100, before_seq: int | None = None) -> AuditPage:
        """Records newest first (before `before_seq` when given): windows read backwards from the tail."""
        filters = filters or AuditFilters()
        self._check_filters(filters)
        await self.flush()
        try:
            state = (await self.nc.jetstream(timeout=self.timeout).stream_info(self.stream)).state
            first = max(1, state.first_seq)
            end = state.last_seq if before_seq is None else min(state.last_seq, before_seq - 1)
            out: list[StoredRecord] = []
            window, scanned = max(2 * limit, READ_BATCH), 0
            while end >= first and len(out) < limit and scanned < MAX_SCAN:
                start = max(first, end - window + 1)
                found: list[StoredRecord] = []
                async for seq, subject, data in self._scan(start, filters.subject(self.prefix)):
                    if seq > end:
                        break
                    scanned += 1
                    try:
                        record = msgspec.json.decode(data, type=AuditRecord)
                    except msgspec.DecodeError:
                        continue
                    if filters.matches(record):
                        found.append(StoredRecord(seq=seq, subject=subject, record=record))
                out.extend(reversed(found))
                end, window = start - 1, window * 2
        except (TimeoutError, nats.errors.Error) as exc:
            raise AuditUnavailable(f"audit trail: read failed ({exc!r})") from None
        out = out[:limit]
        more = (len(out) == limit and out[-1].seq > first) or (scanned >= MAX_SCAN and end >= first)
        return AuditPage(records=out, next_before_seq=(out[-1].seq if out else end + 1) if more else None)

    async def verify(self) -> VerifyReport:
        """Walk the whole stream: every record's hash, its link to the previous one, its hash."""
        await self.flush()
        js = self.nc.jetstream(timeout=self.timeout)
        try:
            state = (await js.stream_info(self.stream)).state
            report = VerifyReport(ok=True, checked=0, first_seq=state.first_seq, last_seq=state.last_seq, last_hash=GENESIS_HASH)
            prev: str | None = GENESIS_HASH if state.first_seq <= 1 else None
            expected_seq = max(1, state.first_seq)
            if state.messages == 0:
                return report
            # a follower answering direct gets may trail the leader by a moment: read up to its last_seq
            for _ in range(50):
                async for seq, subject, data in self._scan(expected_seq, f"{self.prefix}.>"):
                    if seq > state.last_seq:
                        break
                    h, record, reason = check_stored(data, prev)
                    if not reason and record is not None and subject != self._subject(record):
                        reason = f"subject: {subject} does not match the record (want: {self._subject(record)})"
                    if not reason and seq != expected_seq:
                        reason = f"sequence: records {expected_seq}..{seq - 1} are missing"
                    report.checked += 1
                    if reason:
                        report.bad += 1
                        if report.first_bad_seq is None:
                            report.ok, report.first_bad_seq, report.reason = False, seq, reason
                    prev = h
                    expected_seq = seq + 1
                if expected_seq > state.last_seq:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AuditUnavailable(f"audit trail: could not read up to sequence {state.last_seq} (stopped at {expected_seq - 1})")
        except (TimeoutError, nats.errors.Error) as exc:
            raise AuditUnavailable(f"audit trail: verify failed ({exc!r})") from None
        report.last_hash = prev or ""
        return report


