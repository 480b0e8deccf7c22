"""Lost acknowledgements: a batch sent without an answer is adopted if it landed, never sent twice.

A publish whose answer never came (leader change, reconnect) may still commit, but only at
exactly last+1: it was conditioned on `Nats-Expected-Last-Sequence` = last. So before the writer
relinks such a batch, it reads that sequence and adopts the batch if it is there. A lost ack thus
neither loses the records nor stores them twice.

Only bases the stream has moved past are looked at; the others may still commit, and the next
publish (on the current tail) settles them: it succeeds (then they never can) or conflicts (then
look again). The stored copies are what the writer hands back: they are the truth.
"""

from __future__ import annotations

from controlplane.audit.records import AuditRecord, StoredRecord, check_stored
from controlplane.audit.stream import AuditStream, Rejected


class LostAcks:
    """The batches sent without an answer, by first record id, and their adoption."""

    def __init__(self, store: AuditStream) -> None:
        self.store = store
        # first record id of a batch sent without an answer -> the sequences those sends were conditioned on
        self._bases: dict[str, set[int]] = {}

    def __contains__(self, first_id: str) -> bool:
        return first_id in self._bases

    def unanswered(self, first_id: str, base: int) -> None:
        """A batch starting with `first_id`, conditioned on `base`, got no answer: it may land at base+1."""
        self._bases.setdefault(first_id, set()).add(base)

    def settled(self, first_id: str) -> None:
        """The batch starting with `first_id` was acknowledged: one conditioned on an older tail cannot land now."""
        self._bases.pop(first_id, None)

    async def adopt(self, pending: list[AuditRecord], tail: int) -> list[StoredRecord]:
        """The records of `pending`, from its start, that a batch sent without an answer did store."""
        first_id = pending[0].record_id
        bases = self._bases.get(first_id, set())
        for base in sorted(b for b in bases if b < tail):
            landed = await self._landed_at(base, pending)
            if landed:
                del self._bases[first_id]
                return landed
        remaining = {b for b in bases if b >= tail}  # the others can never commit any more
        if remaining:
            self._bases[first_id] = remaining
        else:
            self._bases.pop(first_id, None)
        return []

    async def _landed_at(self, base: int, pending: list[AuditRecord]) -> list[StoredRecord]:
        try:
            data = await self.store.message(base + 1)
        except Rejected:
            return []
        _, first, _ = check_stored(data, None)
        if first is None or first.record_id != pending[0].record_id:
            return []
        # ours: the batch is atomic, so the rest follows it; read the stored copies (they are the truth)
        landed: list[StoredRecord] = []
        async for seq, subject, data in self.store.scan(base + 1, self.store.every_subject):
            _, rec, _ = check_stored(data, None)
            i = len(landed)
            if rec is None or i >= len(pending) or rec.record_id != pending[i].record_id or seq != base + 1 + i:
                break
            landed.append(StoredRecord(seq=seq, subject=subject, record=rec))
        return landed
