"""Attach the audit trail, decision metrics and escalations to a started control plane.

Runs at app start after the policy runtime has connected to NATS: creates (or adjusts) the audit
stream with `GROQPOLICY_NATS_REPLICAS` replicas, then points the evaluation pipeline's audit sink
and escalation hook at it. The sink also records the decision metrics, so every decision that is
served is both audited and counted, and one that could not be audited is neither (it fails).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.audit.trail import AuditError, AuditTrail
from controlplane.escalation import escalation_sink
from controlplane.metrics.recorders import record_audit_append, record_decision

if TYPE_CHECKING:
    from controlplane.services import Services

# the seed's tier targets, in ms (kept here so the audit package does not import the policies package)
TIER_TARGET_MS = {"nano": 1.0, "fast": 2.0, "balanced": 3.0, "premium": 5.0, "reasoning": 1000.0}


class RecordingAuditSink:
    """`append(record)` for the pipeline: audit first, then count the decision."""

    def __init__(self, trail: AuditTrail) -> None:
        self.trail = trail

    async def append(self, record: AuditRecord) -> StoredRecord:
        return (await self.append_many([record]))[0]

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        try:
            stored = await self.trail.append_many(records)
        except AuditError:
            record_audit_append("", len(records), failed=True)
            raise
        for r in records:
            record_audit_append(r.source)
            latency_s = (r.latency_ms or 0.0) / 1000
            target = TIER_TARGET_MS.get(r.performance_tier)
            achieved = None if target is None or r.latency_ms is None else r.latency_ms <= target
            record_decision(r.decision, r.performance_tier or "none", latency_s, source=r.source, target_achieved=achieved)
        return stored


async def start_audit(services: Services) -> None:
    nc = services.runtime.nats.client
    trail = AuditTrail(nc, replicas=services.settings.nats_replicas)
    await trail.ensure_stream()
    services.audit = trail
    services.runtime.pipeline.audit = RecordingAuditSink(trail)
    services.runtime.pipeline.escalate = escalation_sink(nc)


async def stop_audit(services: Services) -> None:
    trail, services.audit = services.audit, None
    if trail is not None:
        await trail.close()
