"""Certifications on the audit trail: one record per outcome of a policy write's certification
(controlplane.certification.certifier), the signed certificate in its details.

`source` is "certification"; `decision` is "allow" when the revision may be activated (certified,
or a review's deny overridden) and "deny" when it may not (a check failed, or the review denied);
`reasons` say why (the failed checks' problems, the review's findings, the override's reason).
The record is appended with JetStream's ack whatever the trail's durability: a policy write is
rare, and it must not be answered before its certification is on the trail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from controlplane.audit.errors import AuditUnavailable
from controlplane.audit.records import AuditRecord
from controlplane.audit.trail import AuditTrail
from controlplane.certification.certificate import PolicyCertificate
from controlplane.certification.certifier import Outcome

APPEND_TIMEOUT_S = 10


def certification_record(outcome: Outcome, cert: PolicyCertificate) -> AuditRecord:
    reasons = [f"{c.name}: {p}" for c in cert.checks for p in c.problems]
    if cert.review is not None:
        reasons += [f"model review ({cert.review.tier}, {cert.review.model}) {cert.review.decision}: {f}"
                    for f in cert.review.findings]
    if outcome == "overridden" and cert.override is not None:
        reasons.append(f"review overridden by {cert.override.by}: {cert.override.reason}")
    return AuditRecord(
        source="certification", decision="allow" if outcome in ("certified", "overridden") else "deny",
        policy_ids=[cert.rule_id], reasons=reasons or ["every certification check passed"],
        confidence_score=cert.review.confidence if cert.review is not None else None,
        details={"outcome": outcome, "policy_version": cert.policy_version, "certificate": msgspec.to_builtins(cert)},
    )


class CertificationRecorder:
    """The certifier's `CertificationSink` on the audit trail (the recorder's, once started). Without
    NATS it refuses at once (503): JetStream's ack would only come after a reconnect."""

    def __init__(self, trail: Callable[[], AuditTrail | None], connected: Callable[[], bool]) -> None:
        self._trail = trail  # the trail once started, else None
        self._connected = connected

    async def __call__(self, outcome: Outcome, cert: PolicyCertificate) -> None:
        trail = self._trail()
        if trail is None or not self._connected():
            raise AuditUnavailable("audit trail: NATS is not connected, so the certification cannot be recorded; "
                                   "the policy is not written")
        try:
            await asyncio.wait_for(trail.append_many([certification_record(outcome, cert)]), APPEND_TIMEOUT_S)
        except TimeoutError:
            raise AuditUnavailable(f"audit trail: the certification was not acknowledged within {APPEND_TIMEOUT_S} s; "
                                   "the policy is not written") from None
