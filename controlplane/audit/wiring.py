"""The evaluation pipeline's decision recorder and escalation sink, on the audit trail and NATS.

Both are built by the composition root before the NATS connection exists, with its holder, and
handed to the pipeline at construction. `RecordingAuditSink` is also a lifecycle component: at
start it creates (or adjusts) the audit stream with `GROQPOLICY_NATS_REPLICAS` replicas, opens the
spool (`<state_dir>/audit-spool`), re-queues what a previous run left in it and starts the signed
checkpoints (`<state_dir>/audit-checkpoint.json`, every `GROQPOLICY_AUDIT_CHECKPOINT_S`); at stop
it closes the trail (which takes a last checkpoint). Records are signed with the record key the
composition root loaded (controlplane.infra.recordkeys). It records every decision (spool or JetStream ack, by `GROQPOLICY_AUDIT_DURABILITY`)
before the decision is answered, then counts it, so every decision that is served is both
recorded and counted, and one that could not be recorded is neither (it fails).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.kernel.config import ConfigError, Settings, audit_durability
from bridge.kernel.vocabulary import TIER_TARGET_MS
from controlplane.audit import AuditError, AuditRecord, AuditTrail, AuditUnavailable, StoredRecord
from controlplane.audit.checkpoints import LOCAL_FILE
from controlplane.audit.escalation import escalation_sink
from controlplane.audit.evaluations import audit_record, batch_audit_record
from controlplane.audit.spool import AuditSpool, SpoolError
from controlplane.evaluation.interfaces import Source
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.infra.nats import NatsConnection
from controlplane.infra.recordkeys import RecordKeys
from controlplane.metrics.recorders import record_audit_append, record_decisions


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
    """The pipeline's `DecisionRecorder` (controlplane.evaluation.interfaces) on the audit trail:
    record first (spool or JetStream ack), then count the decision (right after the response)."""

    def __init__(self, settings: Settings, nats: NatsConnection, keys: RecordKeys) -> None:
        try:
            self.durability = audit_durability(settings.audit_durability)
        except ValueError as exc:
            raise ConfigError(f"GROQPOLICY_AUDIT_DURABILITY={settings.audit_durability!r}: {exc}") from None
        if not settings.audit_checkpoint_s > 0:
            raise ConfigError(f"GROQPOLICY_AUDIT_CHECKPOINT_S={settings.audit_checkpoint_s!r}: must be above 0")
        self._settings = settings
        self._nats = nats
        self._keys = keys
        self.trail: AuditTrail | None = None  # once started

    async def start(self) -> None:
        settings = self._settings
        spool = None
        if self.durability == "spool":
            try:
                spool = AuditSpool(settings.state_dir / "audit-spool")
            except SpoolError as exc:
                raise ConfigError(str(exc)) from None
        trail = AuditTrail(self._nats.client, keys=self._keys, checkpoint_file=settings.state_dir / LOCAL_FILE,
                           replicas=settings.nats_replicas, spool=spool, max_backlog=settings.audit_max_backlog,
                           on_spooled_stored=_count_appends, max_age_s=settings.audit_max_age_s,
                           max_bytes=settings.audit_max_bytes)
        await trail.ensure_stream()
        await trail.resume_spool()
        trail.checkpoints.start(settings.audit_checkpoint_s)
        self.trail = trail

    async def stop(self) -> None:
        trail, self.trail = self.trail, None
        if trail is not None:
            await trail.close()

    async def record(self, response: EvaluateResponse, *, tier: str, source: Source,
                     input_context: dict[str, Any], policy_types: list[str] | None = None) -> StoredRecord | None:
        stored = await self.append_many([audit_record(response, tier=tier, source=source, input_context=input_context)])
        return stored[0] if stored else None

    async def record_batch(self, responses: list[EvaluateResponse], contexts: list[dict[str, Any]], *, tier: str,
                           batch_id: str, latency_ms: float, policy_types: list[str] | None = None) -> StoredRecord | None:
        record = batch_audit_record(responses, contexts, tier=tier, batch_id=batch_id, latency_ms=latency_ms)
        stored = await self.append_many([record])
        return stored[0] if stored else None

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]:
        trail = self.trail
        stored: list[StoredRecord] = []
        try:
            if trail is None:
                raise AuditUnavailable("audit trail: not started (no NATS connection); the decision is not served")
            if self.durability == "spool":
                trail.submit(records)  # appends counted when JetStream has them (on_spooled_stored)
            else:
                stored = await trail.append_many(records)
                _count_appends(records)
        except AuditError:
            record_audit_append("", len(records), failed=True)
            raise
        # counted at the loop's next turn, once the response is on its way: metrics are not on the
        # decision's path (a scrape that follows the response still sees them)
        asyncio.get_running_loop().call_soon(_count_decisions, records)
        return stored


class EscalationPublisher:
    """The pipeline's escalation sink: publishes on the control plane's NATS connection
    (controlplane.audit.escalation; a failed publish is logged and counted, never raised)."""

    def __init__(self, nats: NatsConnection) -> None:
        self._nats = nats

    async def __call__(self, doc: dict[str, Any]) -> None:
        await escalation_sink(self._nats.nc)(doc)
