"""Audit records of the evaluation pipeline's decisions: an adapter from `EvaluateResponse`.

One evaluation is one record; a batch request is one record with an entry per evaluation (see
`AuditRecord`). A record holds the digest of each evaluated input, never the input itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.kernel.vocabulary import strictest
from controlplane.audit.records import AuditRecord, EvaluationEntry, digest
from controlplane.evaluation.interfaces import Source
from controlplane.evaluation.schemas import EvaluateResponse

MAX_REASONS = 50  # reasons kept per evaluation


def audit_record(response: EvaluateResponse, *, tier: str, source: Source, input_context: dict[str, Any] | None = None,
                 batch_id: str = "") -> AuditRecord:
    """The audit trail's record for one evaluation."""
    return AuditRecord(
        source=source, decision=response.decision, evaluation_id=str(response.evaluation_id), batch_id=batch_id,
        policy_ids=msgspec.to_builtins(response.applicable_policies), bundle_revisions={"groqpolicy": response.bundle_revision},
        performance_tier=tier, confidence_score=response.confidence_score, reasons=response.reasons[:MAX_REASONS],
        violations=[f"{v.principle}: {v.message}" for v in response.constitutional_compliance.violations],
        latency_ms=response.performance_metrics.total_latency_ms,
        input_sha256=digest(input_context) if input_context is not None else "",  # ties the record to its input
    )


def batch_audit_record(responses: list[EvaluateResponse], contexts: list[dict[str, Any]], *, tier: str, batch_id: str,
                       latency_ms: float) -> AuditRecord:
    """One audit record for a whole batch: an entry per evaluation, the strictest decision, the
    union of the policies consulted, and the whole batch's time."""
    entries = []
    decision = "allow"
    policy_ids: dict[str, None] = {}
    revisions: dict[str, None] = {}
    as_text: dict[int, list[str]] = {}  # the responses of a batch share their applicable-policy list
    evaluation_ids = msgspec.to_builtins([r.evaluation_id for r in responses])  # canonical text, without a str() each
    for response, ctx, evaluation_id in zip(responses, contexts, evaluation_ids, strict=True):
        ids = as_text.get(id(response.applicable_policies))
        if ids is None:
            ids = as_text[id(response.applicable_policies)] = [str(p) for p in response.applicable_policies]
            policy_ids.update(dict.fromkeys(ids))
        revisions[response.bundle_revision] = None
        decision = strictest(decision, response.decision)
        entries.append(EvaluationEntry(
            evaluation_id=evaluation_id, decision=response.decision, policy_ids=ids,
            confidence_score=response.confidence_score, reasons=response.reasons[:MAX_REASONS],
            violations=[f"{v.principle}: {v.message}" for v in response.constitutional_compliance.violations],
            input_sha256=digest(ctx),
            latency_ms=response.performance_metrics.total_latency_ms))
    revision = next(iter(revisions), "")
    return AuditRecord(
        source="batch", decision=decision, batch_id=batch_id, policy_ids=list(policy_ids),
        bundle_revisions={"groqpolicy": revision}, performance_tier=tier, latency_ms=round(latency_ms, 4),
        evaluations=entries,
    )
