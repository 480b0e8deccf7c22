"""Signed audit records: one signature per publish (a record or an atomic batch), and which records
it vouches for.

The scheme. The writer stores n records (n >= 1) as one publish, a single message or an atomic
batch, conditioned on the stream's last sequence L (controlplane.audit.publisher), so they land at
exactly L+1..L+n or not at all.
It seals them into the chain and signs once: the last record carries `signature` = {kid, first_seq:
L+1, sig}, an Ed25519 signature of the control plane's record key (controlplane.infra.recordkeys)
over `{"stream", "first_seq", "last_seq", "hash", "kid"}`, where `hash` is that last record's chain
hash and `last_seq` its sequence.

Why one signature covers the batch: the last record's hash covers its `prev_hash`, which is the
hash of the record before it, and so on back to the first record of the batch. `verify` rehashes
every record and checks every link, so a valid signature over the last hash vouches for each record
of the batch through the chain.

Why the signature names its range: the chain goes further back than the batch. A batch links to
whatever the stream's tail is, and that may be a record someone appended straight to the stream
(an identity allowed to publish there, without the key). Vouching for everything behind it would
bless that record; vouching for `first_seq`..`last_seq` only does not. `verify` therefore requires
every record to lie in the range of a valid signature at or after it, and names the first that does
not: `unsigned` (no signature covers it), `forged` (the signature covering it does not verify),
`unknown key` (signed by a key outside the trusted set).

Why the sequences are signed: a signed batch copied to other sequences (the stream recreated and
refilled in another order) no longer verifies. What the signatures cannot show is records cut off
the end of the stream: that is what the signed checkpoints are for (controlplane.audit.checkpoints).

Cost: signing happens where sealing does, in the writer, once per publish: per record while the
writer's queue is short (a single publish each), once per batch when it is long.
With write-behind appends (`submit`, spool durability) that is the background writer, after the
decision was answered; with `ack` durability it adds one signature to a wait for JetStream that the
caller pays anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from controlplane.audit.records import AuditRecord, BatchSignature, Finding
from controlplane.infra.recordkeys import FORGED, UNSIGNED, RecordKeys

DOMAIN = "groqpolicy-audit-batch-v1"


def _payload(stream: str, first_seq: int, last_seq: int, last_hash: str, kid: str) -> dict[str, object]:
    return {"stream": stream, "first_seq": first_seq, "last_seq": last_seq, "hash": last_hash, "kid": kid}


def signer(keys: RecordKeys, stream: str, first_seq: int, last_seq: int) -> Callable[[str], BatchSignature]:
    """The signature for the last record of a publish stored at `first_seq`..`last_seq`, given that
    record's chain hash (`seal(..., sign=)` calls it once the hash is known)."""
    def sign(last_hash: str) -> BatchSignature:
        sig = keys.sign(DOMAIN, _payload(stream, first_seq, last_seq, last_hash, keys.kid))
        return BatchSignature(kid=keys.kid, first_seq=first_seq, sig=sig)
    return sign


def check_batch(record: AuditRecord, seq: int, stream: str, keys: RecordKeys) -> str:
    """"" when the signature on `record` (stored at `seq`) verifies, else the problem."""
    sig = record.signature
    if sig is None:
        return UNSIGNED
    if not 1 <= sig.first_seq <= seq:
        return FORGED
    return keys.check(DOMAIN, _payload(stream, sig.first_seq, seq, record.hash, sig.kid), sig.kid, sig.sig)


class Coverage:
    """Which records valid batch signatures vouch for, as `verify` walks the stream in order.

    `take` and `end` yield the ranges (first, last, finding) of records found not covered."""

    def __init__(self, keys: RecordKeys, stream: str) -> None:
        self.keys = keys
        self.stream = stream
        self.open_from: int | None = None  # the first record no signature has covered yet
        self.signers: dict[str, int] = {}  # key id -> records its valid signatures cover

    def take(self, seq: int, record: AuditRecord | None) -> Iterator[tuple[int, int, Finding]]:
        if self.open_from is None:
            self.open_from = seq
        if record is None or record.signature is None:
            return
        sig, start = record.signature, self.open_from
        self.open_from = None
        claimed = sig.first_seq if 1 <= sig.first_seq <= seq else seq
        if start < claimed:
            yield start, claimed - 1, Finding(
                UNSIGNED, f"signature: none covers this record (the next one, at seq {seq}, signs {claimed}..{seq})")
        problem = check_batch(record, seq, self.stream, self.keys)
        first = max(start, claimed)
        if problem == FORGED:
            yield first, seq, Finding(FORGED, f"signature: the one at seq {seq} (key {sig.kid}, records "
                                              f"{sig.first_seq}..{seq}) does not verify")
        elif problem:
            yield first, seq, Finding(problem, f"signature: the one at seq {seq} (records {sig.first_seq}..{seq}) "
                                               f"is by key {sig.kid}, which is not trusted")
        else:
            self.signers[sig.kid] = self.signers.get(sig.kid, 0) + seq - first + 1

    def end(self, last_seq: int) -> Iterator[tuple[int, int, Finding]]:
        if self.open_from is not None and self.open_from <= last_seq:
            yield self.open_from, last_seq, Finding(
                UNSIGNED, f"signature: none covers this record (none follows it up to seq {last_seq})")
        self.open_from = None
