"""The audit record, its canonical encoding and its chain hash.

A record's `hash` is SHA-256 over the canonical JSON of every other field (keys sorted, compact,
msgspec's shortest float repr), `prev_hash` included: changing, dropping or reordering any
record breaks the chain at that record. Verification rehashes the stored bytes decoded as a
generic object, so a field the struct does not know about is covered too.

The one field the hash leaves out is `signature`: it is made over the hash (controlplane.audit.signing
explains what it covers), so it cannot be part of it. Records without one store none.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.ids import uuid4_text

# "admin": an operator's step that is not a decision (impact runs, shadows, promotions: controlplane.impact);
# "certification": a policy revision certified, refused, denied by its model review or overridden
Source = Literal["api", "batch", "nats", "opa-agent", "admin", "certification"]
SOURCES: tuple[str, ...] = ("api", "batch", "nats", "opa-agent", "admin", "certification")
# Subject tokens: decisions outside the policy decision document's three land in `other`/`undefined`;
# `rejected` marks an OPA decision-log event the control plane refused (controlplane.agents.ingest).
REJECTED = "rejected"
DECISIONS: tuple[str, ...] = ("allow", "deny", "review", "undefined", "other", REJECTED)
GENESIS_HASH = "0" * 64  # prev_hash of the first record of a stream
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class EvaluationEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One evaluation inside a batch record (a batch request is one record: see AuditRecord)."""

    evaluation_id: str
    decision: str
    policy_ids: list[str] = msgspec.field(default_factory=list)
    confidence_score: float | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    violations: list[str] = msgspec.field(default_factory=list)
    input_sha256: str = ""
    latency_ms: float | None = None


class BatchSignature(msgspec.Struct, kw_only=True, frozen=True):
    """The writer's signature on the last record of a group commit: over the records
    `first_seq`..(this record's sequence), through this record's hash (controlplane.audit.signing)."""

    kid: str
    first_seq: int
    sig: str


class AuditRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One decision, or one batch of them.

    A batch request (`source` "batch") is one record: its `evaluations` hold every context's
    evaluation, its `decision` is the strictest among them (deny > review > allow), `policy_ids`
    the union, `latency_ms` the whole batch's time. The chain hash covers each entry. Ids are strings so rule UUIDs, OPA decision ids and paths fit alike."""

    source: Source
    decision: str
    constitutional_hash: str = CONSTITUTIONAL_HASH
    record_id: str = msgspec.field(default_factory=uuid4_text)
    timestamp: str = ""  # RFC 3339 UTC, set at append
    evaluation_id: str = ""
    batch_id: str = ""
    decision_id: str = ""  # OPA's decision id (opa-agent records)
    policy_ids: list[str] = msgspec.field(default_factory=list)  # rule ids the decision consulted
    path: str = ""  # OPA query path (opa-agent records)
    agent_id: str = ""
    bundle_revisions: dict[str, str] = msgspec.field(default_factory=dict)
    performance_tier: str = ""
    confidence_score: float | None = None
    reasons: list[str] = msgspec.field(default_factory=list)
    violations: list[str] = msgspec.field(default_factory=list)
    input_sha256: str = ""  # digest of the input, never the input itself (it may hold personal data)
    latency_ms: float | None = None
    details: dict = msgspec.field(default_factory=dict)
    evaluations: list[EvaluationEntry] = msgspec.field(default_factory=list)  # batch records only
    prev_hash: str = ""
    hash: str = ""
    signature: BatchSignature | None = None  # on the last record of each group commit

    @property
    def subject_decision(self) -> str:
        return self.decision if self.decision in DECISIONS else "other"


class StoredRecord(msgspec.Struct, kw_only=True, frozen=True):
    """A record as read back: its stream sequence and subject, then the record."""

    seq: int
    subject: str
    record: AuditRecord


_second: list = [-1, ""]  # the last whole second formatted, and its text


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 with microseconds (strftime once per second, not per record)."""
    ns = time.time_ns()
    sec, us = divmod(ns // 1000, 1_000_000)
    if sec != _second[0]:
        _second[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = sec
    return f"{_second[1]}.{us:06d}Z"


def parse_time(value: str) -> float:
    """Epoch seconds from RFC 3339 (`Z` or offset) or a plain number of epoch seconds."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not (0 <= seconds < 253402300800):  # 1970 .. 9999-12-31, what RFC 3339 can say
            raise ValueError(f"{value!r}: epoch seconds out of range (0 to 253402300799)")
        return seconds
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r}: expected RFC 3339 (2026-11-27T12:00:00Z) or epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def record_time(record: AuditRecord) -> float:
    try:
        return parse_time(record.timestamp)
    except ValueError:
        return 0.0


def _encode_sorted(obj: object) -> bytes:
    """Canonical JSON: compact, keys sorted at every level (struct fields included)."""
    return msgspec.json.encode(obj, order="sorted")


def digest(obj: object) -> str:
    """SHA-256 of an object's canonical JSON (used for `input_sha256`)."""
    return hashlib.sha256(_encode_sorted(obj)).hexdigest()


_UNHASHED = ("hash", "signature")


def chain_hash(fields: dict) -> str:
    """The hash of a record given as a plain dict; its own `hash` and `signature` keys are left out."""
    body = {k: v for k, v in fields.items() if k not in _UNHASHED}
    return hashlib.sha256(_encode_sorted(body)).hexdigest()


def _canonical_struct() -> type[msgspec.Struct]:
    """AuditRecord's fields as a struct that writes `hash` only when set and `signature` only when
    present, every other field always (as AuditRecord does): the canonical JSON comes straight from
    the record's fields, without building a dict of the whole record (and of each batch entry) first.
    Made from AuditRecord's own field list, so a field added there is hashed and stored here too."""
    kept = [(name, object) for name in AuditRecord.__struct_fields__ if name not in _UNHASHED]
    return msgspec.defstruct("CanonicalRecord", [*kept, ("hash", str, ""), ("signature", object, None)],
                             kw_only=True, omit_defaults=True)


_Canonical: Any = _canonical_struct()


def seal(record: AuditRecord, prev_hash: str,
         sign: Callable[[str], BatchSignature] | None = None) -> tuple[AuditRecord, bytes]:
    """The record linked after `prev_hash`, and the exact bytes to store; signed over its hash by
    `sign` when given (the last record of a publish: controlplane.audit.signing)."""
    linked = msgspec.structs.replace(record, prev_hash=prev_hash, hash="", signature=None,
                                     timestamp=record.timestamp or now_rfc3339())
    fields = msgspec.structs.asdict(linked)
    if linked.evaluations:  # a batch's entries, encoded once for the hash and the stored bytes both
        fields["evaluations"] = msgspec.Raw(_encode_sorted(linked.evaluations))
    canonical = _Canonical(**fields)
    h = hashlib.sha256(_encode_sorted(canonical)).hexdigest()  # hash "" and signature None: left out
    canonical.hash = h
    signature = canonical.signature = sign(h) if sign is not None else None
    return msgspec.structs.replace(linked, hash=h, signature=signature), _encode_sorted(canonical)


def seal_chain(records: list[AuditRecord], prev_hash: str,
               sign: Callable[[str], BatchSignature] | None = None) -> list[tuple[AuditRecord, bytes]]:
    """`records` sealed one after another from `prev_hash` on (what one publish stores), the last
    one signed by `sign` when given; each with the exact bytes to store."""
    chunk = []
    for i, r in enumerate(records, 1):
        sealed = seal(r, prev_hash, sign if i == len(records) else None)
        chunk.append(sealed)
        prev_hash = sealed[0].hash
    return chunk


class Finding(msgspec.Struct, frozen=True):
    """What is wrong with a record: one of the problem words below, and the details."""

    problem: str
    reason: str


# The problems `verify` names besides the signature's (controlplane.infra.recordkeys: forged,
# unknown key, unsigned): what the chain itself shows.
MALFORMED = "malformed"  # not a record: unreadable, a field of the wrong type, another constitution, wrong subject
ALTERED = "altered"  # the record's content does not hash to the hash it states
BROKEN_LINK = "broken link"  # it does not link to the record before it
GAP = "gap"  # sequences before it are missing
TRUNCATED = "truncated"  # the stream is shorter than, or not the one, a signed checkpoint saw


def inspect_stored(data: bytes, expected_prev: str | None) -> tuple[str, AuditRecord | None, Finding | None]:
    """Check one stored payload: (the hash its successor links to, the record, None or what is wrong).

    The link hash is the hash the record states (the computed one when it states none), so a
    record altered after the fact is reported once, not again at its intact successor.

    `expected_prev` is the previous record's hash, or None when no predecessor is known (the
    first record still present in a stream whose head was removed).
    """
    try:
        fields = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return "", None, Finding(MALFORMED, f"payload: invalid JSON ({exc})")
    if not isinstance(fields, dict):
        return "", None, Finding(MALFORMED, f"payload: expected a JSON object, got {type(fields).__name__}")
    stated = fields.get("hash")
    actual = chain_hash(fields)
    link = stated if isinstance(stated, str) and stated else actual
    if stated != actual:
        return link, None, Finding(ALTERED, f"hash: mismatch (stated: {stated}, computed: {actual})")
    try:
        record = msgspec.convert(fields, AuditRecord)
    except msgspec.ValidationError as exc:
        return actual, None, Finding(MALFORMED, f"record: {exc}")
    if expected_prev is not None and record.prev_hash != expected_prev:
        return actual, record, Finding(BROKEN_LINK, "prev_hash: does not link to the previous record "
                                                    f"(want: {expected_prev}, got: {record.prev_hash})")
    if expected_prev is None and not _HEX64.match(record.prev_hash):
        return actual, record, Finding(BROKEN_LINK, f"prev_hash: not a SHA-256 hex digest ({record.prev_hash!r})")
    if record.constitutional_hash != CONSTITUTIONAL_HASH:
        return actual, record, Finding(MALFORMED, f"constitutional_hash: want {CONSTITUTIONAL_HASH}, "
                                                  f"got {record.constitutional_hash}")
    return actual, record, None


def check_stored(data: bytes, expected_prev: str | None) -> tuple[str, AuditRecord | None, str]:
    """`inspect_stored` with the finding as one line of text ("" when the record is sound)."""
    link, record, finding = inspect_stored(data, expected_prev)
    return link, record, finding.reason if finding is not None else ""
