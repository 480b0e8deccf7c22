"""Attach the audit trail, decision metrics and escalations to a started control plane.

Runs at app start after the policy runtime has connected to NATS: creates (or adjusts) the audit
stream with `GROQPOLICY_NATS_REPLICAS` replicas, opens the spool (`<state_dir>/audit-spool`) and
re-queues what a previous run left in it, then points the evaluation pipeline's audit sink and
escalation hook at it. The sink also records the decision metrics, so every decision that is
served is both recorded and counted, and one that could not be recorded is neither (it fails).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bridge.kernel.config import ConfigError, audit_durability
from controlplane.audit.escalation import escalation_sink
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.audit.spool import AuditSpool, SpoolError
from controlplane.audit.trail import AuditError, AuditTrail
from controlplane.metrics.recorders import record_audit_append, record_decisions

if TYPE_CHECKING:
    from controlplane.services import Services

# the seed's tier targets, in ms (kept here so the audit package does not import the policies package)
TIER_TARGET_MS = {"nano": 1.0, "fast": 2.0, "balanced": 3.0, "premium": 5.0, "reasoning": 1000.0}


def _count_decisions(records: list[AuditRecord]) -> None:
    """Decision metrics: every evaluation counts (a batch record's entries, summed per label set);
    the latency histogram gets one observation per record (a batch: its whole time)."""
    for r in records:
        target = TIER_TARGET_MS.get(r.performance_tier)
        outcomes: dict[str, int] = {}
        met = missed = 0
        for e in r.evaluations or (r,):
            outcomes[e.decision] = outcomes.get(e.decision, 0) + 1
            if target is not None and e.latency_ms is not None:
                if e.latency_ms <= target:
                    met += 1
                else:
                    missed += 1
        record_decisions(outcomes, r.performance_tier or "none", (r.latency_ms or 0.0) / 1000, source=r.source,
                         met=met, missed=missed)


def _count_appends(records: list[AuditRecord]) -> None:
    for r in records:
        record_audit_append(r.source)


class RecordingAuditSink:
    """`append(record)` for the pipeline: record first (spool or JetStream ack), then count the decision
    (right after the response)."""

    def __init__(self, trail: AuditTrail, durability: str = "ack") -> None:
        self.trail = trail
        self.durability = durability

    async def append(self, record: AuditRecord) -> StoredRecord | None:
        stored = await self.append_many([record])
        return stored[0] if stored else None

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        stored: list[StoredRecord] = []
        try:
            if self.durability == "spool":
                self.trail.submit(records)  # appends counted when JetStream has them (on_spooled_stored)
            else:
                stored = await self.trail.append_many(records)
                _count_appends(records)
        except AuditError:
            record_audit_append("", len(records), failed=True)
            raise
        # counted at the loop's next turn, once the response is on its way: metrics are not on the
        # decision's path (a scrape that follows the response still sees them)
        asyncio.get_running_loop().call_soon(_count_decisions, records)
        return stored


async def start_audit(services: Services) -> None:
    settings = services.settings
    try:
        durability = audit_durability(settings.audit_durability)
    except ValueError as exc:
        raise ConfigError(f"GROQPOLICY_AUDIT_DURABILITY={settings.audit_durability!r}: {exc}") from None
    nc = services.runtime.nats.client
    spool = None
    if durability == "spool":
        try:
            spool = AuditSpool(settings.state_dir / "audit-spool")
        except SpoolError as exc:
            raise ConfigError(str(exc)) from None
    trail = AuditTrail(nc, replicas=settings.nats_replicas, spool=spool, max_backlog=settings.audit_max_backlog,
                       on_spooled_stored=_count_appends)
    await trail.ensure_stream()
    await trail.resume_spool()
    services.audit = trail
    services.runtime.pipeline.audit = RecordingAuditSink(trail, durability)
    services.runtime.pipeline.escalate = escalation_sink(nc)


async def stop_audit(services: Services) -> None:
    trail, services.audit = services.audit, None
    if trail is not None:
        await trail.close()
