"""Audit records from OPA agents' decision-log events (evaluations get theirs from the evaluation path).

Only the mapping lives here; whoever stores the records (the trail, its writer) is the caller's
choice, so this module depends on the record alone. A refused event gets a record of its own
(`rejected_event_record`): the loss is visible in the trail.
"""

from __future__ import annotations

import uuid

from controlplane.audit.records import REJECTED, AuditRecord, digest


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


def decision_log_record(event: dict, *, body_digest: str = "", repeated_of: str = "") -> AuditRecord:
    """The audit record of one OPA decision-log event (already validated by the ingest path).

    `body_digest` is the event's digest; `repeated_of` the digest of a different event the agent
    sent earlier under the same decision id: this one is kept too, under its own record id, and flagged."""
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
    record_id = f"opa-{decision_id}" if decision_id else str(uuid.uuid4())
    if repeated_of:
        details["repeated_decision_id"] = {"first_event_sha256": repeated_of, "event_sha256": body_digest}
        record_id = f"{record_id}-{body_digest[:16]}"
    return AuditRecord(
        source="opa-agent",
        decision=decision,
        # deterministic, so an upload the agent retries (after a 5xx) is not recorded twice
        record_id=record_id,
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


def rejected_event_record(*, decision_id: str, agent_id: str, event_sha256: str, size: int, reason: str) -> AuditRecord:
    """The record of a decision-log event that was refused (too large, not OPA's event shape): the
    decision it carried is not stored, and this says so where decisions are audited."""
    return AuditRecord(
        source="opa-agent",
        decision=REJECTED,
        # one per refused body: an upload retried after a 5xx is not recorded twice
        record_id=f"opa-rejected-{event_sha256[:32]}",
        decision_id=decision_id,
        agent_id=agent_id if agent_id != "unknown" else "",
        reasons=[reason],
        details={"rejected": {"event_sha256": event_sha256, "bytes": size, "reason": reason}},
    )
