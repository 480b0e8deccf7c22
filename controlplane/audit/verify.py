"""`verify`: walk the whole audit stream and name the first record that cannot be trusted, and why.

Every stored record is rehashed and its link to the one before checked (controlplane.audit.records),
its subject and sequence checked, and it must lie in the range of a valid batch signature at or
after it (controlplane.audit.signing). Then the stream is compared with the newest trusted signed
checkpoint (controlplane.audit.checkpoints): it must reach the checkpoint's sequence and hold the
record the checkpoint saw there.

The problems, in the report's `problem`: `forged` (a signature that does not verify), `unknown key`
(signed by a key outside the trusted set), `unsigned` (no signature covers it), `broken link` (it
does not link to the record before it), `gap` (sequences before it are missing), `truncated` (the
stream ends before, or was rewritten under, the last checkpoint), `altered` (its content does not
hash to its stated hash), `malformed` (not a record of this trail). Records at the end whose
commit's signature was cut off with the tail are `truncated` too. A record with several problems
is reported with the first one found; `first_bad_seq` is the lowest bad sequence, and for a cut tail
the first sequence that is gone.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors

from controlplane.audit.checkpoints import Checkpoint, Checkpoints
from controlplane.audit.errors import AuditUnavailable
from controlplane.audit.records import GAP, GENESIS_HASH, MALFORMED, TRUNCATED, Finding, inspect_stored
from controlplane.audit.signing import Coverage
from controlplane.audit.stream import AuditStream
from controlplane.infra.recordkeys import RecordKeys

VERIFY_CATCH_UP = 50  # passes (0.1 s apart) verify waits for a follower to catch up to the leader's last sequence


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int
    first_seq: int
    last_seq: int
    last_hash: str
    bad: int = 0
    first_bad_seq: int | None = None
    problem: str = ""  # what is wrong with the first bad record (see the module's docstring)
    reason: str = ""  # the details
    signers: dict[str, int] = msgspec.field(default_factory=dict)  # key id -> records its signatures cover
    checkpoint: Checkpoint | None = None  # the checkpoint the stream was compared with


class _Walk:
    """The state of one verify pass over the stream."""

    def __init__(self, store: AuditStream, keys: RecordKeys, report: VerifyReport, checkpoint: Checkpoint | None,
                 prev: str | None, expected_seq: int) -> None:
        self.store = store
        self.report = report
        self.checkpoint = checkpoint
        self.coverage = Coverage(keys, store.name)
        self.prev = prev  # the hash the next record must link to (None: not known)
        self.expected_seq = expected_seq
        self.bad: dict[int, Finding] = {}
        self.gaps: list[tuple[int, int]] = []

    def flag(self, first: int, last: int, finding: Finding) -> None:
        for seq in range(first, last + 1):
            if not any(a <= seq <= b for a, b in self.gaps):
                self.bad.setdefault(seq, finding)

    def visit(self, seq: int, subject: str, data: bytes) -> None:
        link, record, finding = inspect_stored(data, self.prev)
        if finding is None and record is not None and subject != self.store.subject(record):
            finding = Finding(MALFORMED, f"subject: {subject} does not match the record (want: {self.store.subject(record)})")
        if seq != self.expected_seq:
            self.gaps.append((self.expected_seq, seq - 1))
            if finding is None:
                finding = Finding(GAP, f"sequence: records {self.expected_seq}..{seq - 1} are missing")
        self.report.checked += 1
        if finding is not None:
            self.flag(seq, seq, finding)
        for first, last, uncovered in self.coverage.take(seq, record):
            self.flag(first, last, uncovered)
        cp = self.checkpoint
        if cp is not None and seq == cp.seq and link != cp.hash:
            self.flag(seq, seq, Finding(TRUNCATED, f"checkpoint: the record at seq {seq} (hash {link[:16]}…) is not "
                                                   f"the one {cp.describe()} saw: the stream was cut and rewritten"))
        self.prev = link
        self.expected_seq = seq + 1

    def finish(self) -> VerifyReport:
        report = self.report
        cp = self.checkpoint
        cut = cp is not None and cp.seq > report.last_seq
        gone = (f"the stream ends at seq {report.last_seq}, but {cp.describe()} saw it reach seq {cp.seq}"
                if cp is not None else "")
        for first, last, uncovered in self.coverage.end(report.last_seq):
            # a cut through a commit takes its signature (on the commit's last record) with it
            self.flag(first, last, Finding(TRUNCATED, f"checkpoint: the signature of this record's commit is gone "
                                                      f"with the cut tail: {gone}") if cut else uncovered)
        if cut and cp is not None:
            self.flag(report.last_seq + 1, report.last_seq + 1, Finding(
                TRUNCATED, f"checkpoint: {gone}: records {report.last_seq + 1}..{cp.seq} are gone"))
        report.signers = dict(self.coverage.signers)
        report.last_hash = self.prev or ""
        report.bad = len(self.bad)
        if self.bad:
            first = min(self.bad)
            finding = self.bad[first]
            report.ok, report.first_bad_seq, report.problem, report.reason = False, first, finding.problem, finding.reason
        return report


async def verify_stream(store: AuditStream, keys: RecordKeys, checkpoints: Checkpoints | None) -> VerifyReport:
    """Walk the whole stream: hashes, links, subjects, sequences, signatures, and the last checkpoint."""
    try:
        # the checkpoint before the stream's state: the stream only grows after a checkpoint is taken
        checkpoint = await checkpoints.newest() if checkpoints is not None else None
        state = await store.state()
        report = VerifyReport(ok=True, checked=0, first_seq=state.first_seq, last_seq=state.last_seq,
                              last_hash=GENESIS_HASH, checkpoint=checkpoint)
        walk = _Walk(store, keys, report, checkpoint, GENESIS_HASH if state.first_seq <= 1 else None,
                     max(1, state.first_seq))
        if state.messages == 0:
            walk.prev = GENESIS_HASH
            return walk.finish()
        # a follower answering direct gets may trail the leader by a moment: read up to its last_seq
        for _ in range(VERIFY_CATCH_UP):
            async for seq, subject, data in store.scan(walk.expected_seq, store.every_subject):
                if seq > report.last_seq:
                    break
                walk.visit(seq, subject, data)
            if walk.expected_seq > state.last_seq:
                break
            await asyncio.sleep(0.1)
        else:
            raise AuditUnavailable(f"audit trail: could not read up to sequence {state.last_seq} "
                                   f"(stopped at {walk.expected_seq - 1})")
    except (TimeoutError, nats.errors.Error) as exc:
        raise AuditUnavailable(f"audit trail: verify failed ({exc!r})") from exc
    return walk.finish()
