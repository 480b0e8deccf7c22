"""Constitutional escalation events on NATS (`policy.escalations`).

When constitutional pre- or post-validation turns a decision into `deny` or `review`, the pipeline
calls `publish_escalation(nc, ...)`; reviewers and tools subscribe to the subject (or capture it in
a stream). The decision itself never depends on the event being delivered: it is already on the
safe side, and it is in the audit trail. A failed publish is logged and counted
(`groqpolicy_escalations_failed_total`) and reported by the return value, never raised.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client
from prometheus_client import Counter

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit.records import digest, now_rfc3339
from controlplane.metrics.recorders import REGISTRY, record_escalation

log = logging.getLogger(__name__)

SUBJECT = "policy.escalations"
Stage = Literal["pre_validation", "post_validation"]
Escalated = Literal["deny", "review"]

FAILED = Counter("groqpolicy_escalations_failed_total", "Escalation events that could not be published", registry=REGISTRY)


class ViolationNote(msgspec.Struct, frozen=True):
    principle: str
    message: str
    severity: str = ""
    stage: str = ""


class EscalationEvent(msgspec.Struct, kw_only=True, frozen=True):
    evaluation_id: str
    stage: Stage
    decision: Escalated
    violations: list[ViolationNote]
    constitutional_hash: str = CONSTITUTIONAL_HASH
    escalation_id: str = msgspec.field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = msgspec.field(default_factory=now_rfc3339)
    policy_ids: list[str] = msgspec.field(default_factory=list)
    source: str = "api"  # api | batch | nats
    performance_tier: str = ""
    input_sha256: str = ""  # digest of the evaluated input, never the input itself
    reasons: list[str] = msgspec.field(default_factory=list)


_decoder = msgspec.json.Decoder(EscalationEvent)


def decode_escalation(data: bytes) -> EscalationEvent:
    return _decoder.decode(data)


async def publish_escalation(
    nc: Client | None,
    *,
    evaluation_id: str,
    stage: Stage,
    decision: Escalated,
    violations: list[ViolationNote | dict],
    policy_ids: list[str] | None = None,
    source: str = "api",
    performance_tier: str = "",
    input_context: object = None,
    reasons: list[str] | None = None,
    subject: str = SUBJECT,
) -> tuple[EscalationEvent, bool]:
    """Publish one escalation; returns (event, handed to the NATS connection).

    `violations`: ViolationNote or dicts with principle, message (severity, stage optional).
    """
    notes = [v if isinstance(v, ViolationNote) else msgspec.convert(v, ViolationNote) for v in violations]
    event = EscalationEvent(
        evaluation_id=evaluation_id, stage=stage, decision=decision, violations=notes,
        policy_ids=[str(p) for p in policy_ids or []], source=source, performance_tier=performance_tier,
        input_sha256=digest(input_context) if input_context is not None else "", reasons=list(reasons or []),
    )
    record_escalation(decision, stage)
    if nc is None or nc.is_closed:
        FAILED.inc()
        log.error("escalation %s (%s %s, evaluation %s) not published: no NATS connection", event.escalation_id, stage, decision, evaluation_id)
        return event, False
    try:
        await nc.publish(subject, msgspec.json.encode(event), headers={"Nats-Msg-Id": event.escalation_id})
    except (nats.errors.Error, OSError) as exc:
        FAILED.inc()
        log.error("escalation %s (evaluation %s) not published: %r", event.escalation_id, evaluation_id, exc)
        return event, False
    return event, True


def escalation_sink(nc: Client | None) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """The pipeline's `escalate(doc)` hook: doc = {evaluation_id, decision, source, violations: [...]}."""

    async def escalate(doc: dict[str, Any]) -> None:
        violations = list(doc.get("violations") or [])
        stages = {str(v.get("stage", "")) for v in violations if isinstance(v, dict)}
        stage: Stage = "pre_validation" if "pre_validation" in stages else "post_validation"
        decision = doc.get("decision")
        await publish_escalation(
            nc, evaluation_id=str(doc.get("evaluation_id", "")), stage=stage,
            decision=decision if decision in ("deny", "review") else "review",  # violations never leave a plain allow
            violations=violations, policy_ids=doc.get("policy_ids"), source=str(doc.get("source", "api")),
            performance_tier=str(doc.get("performance_tier", "")), input_context=doc.get("input_context"),
        )

    return escalate
