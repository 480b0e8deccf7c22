"""Audit records from OPA agents' decision-log events (evaluations get theirs from the evaluation path).

Only the mapping lives here; whoever stores the records (the trail, its writer) is the caller's
choice, so this module depends on the record alone.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from controlplane.audit.records import AuditRecord, StoredRecord, digest


class Appender(Protocol):
    """What stores records and returns them as stored: AuditTrail or its TrailWriter."""

    async def append_many(self, records: list[AuditRecord]) -> list[StoredRecord]: ...


def decision_of(result: object, has_result: bool) -> tuple[str, float | None, list[str]]:
    """(decision, confidence, reasons) from an OPA result: a decision document, a boolean, or else."""
    if not has_result:
        return "undefined", None, []
    if isinstance(result, bool):
        return ("allow" if result else "deny"), None, []
    if isinstance(result, dict) and isinstance(result.get("decision"), str):
        decision = result["decision"] if result["decision"] in ("allow", "deny", "review") else "other"
        conf = result.get("confidence")
        confidence = float(conf) if isinstance(conf, (int, float)) and not isinstance(conf, bool) else None
        reasons = [str(r) for r in result.get("reasons") or [] if isinstance(r, (str, int, float))] if isinstance(result.get("reasons"), list) else []
        return decision, confidence, reasons
    return "other", None, []


def decision_log_record(event: dict) -> AuditRecord:
    """The audit record of one OPA decision-log event (already validated by the ingest path)."""
    result = event.get("result")
    decision, confidence, reasons = decision_of(result, "result" in event)
    labels = event.get("labels") or {}
    bundles = event.get("bundles") or {}
    revisions = {str(k): str((v or {}).get("revision", "")) for k, v in bundles.items()} if isinstance(bundles, dict) else {}
    policy_ids: list[str] = []
    if isinstance(result, dict):
        for key in ("rule_id", "policy_id"):
            if isinstance(result.get(key), str):
                policy_ids.append(result[key])
        if isinstance(result.get("policy_ids"), list):
            policy_ids.extend(str(p) for p in result["policy_ids"])
    details = {k: event[k] for k in ("timestamp", "requested_by", "error") if k in event}
    decision_id = str(event.get("decision_id", ""))
    return AuditRecord(
        source="opa-agent",
        decision=decision,
        # deterministic, so an upload the agent retries (after a 5xx) is not recorded twice
        record_id=f"opa-{decision_id}" if decision_id else str(uuid.uuid4()),
        decision_id=decision_id,
        path=str(event.get("path", "")),
        agent_id=str(labels.get("agent") or labels.get("id") or ""),
        bundle_revisions=revisions,
        policy_ids=policy_ids,
        confidence_score=confidence,
        reasons=reasons,
        input_sha256=digest(event["input"]) if "input" in event else "",
        details=details,
    )


async def audit_decision_log_events(trail: Appender, events: list[dict]) -> list[StoredRecord]:
    """Append one record per event, in upload order; raises AuditUnavailable if not acknowledged."""
    return await trail.append_many([decision_log_record(e) for e in events])
