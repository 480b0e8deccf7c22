"""Certify one policy revision: the deterministic checks, the optional model review, the signed
certificate, and an audit record of the outcome, whatever it is.

Outcomes (each one audited with the certificate: a refusal before it is raised, a certificate once
the bundle with the policy compiled, before the policy is stored):
- `refused`: a deterministic check failed -> CertificationRefused (422) naming every problem;
- `denied`: the model review answered deny and no override was given -> ReviewDenied (409);
- `overridden`: the review denied and an admin overrode it (who, when, why are in the certificate);
- `certified`: everything passed.

A write that does not ask for a review keeps the review (and override) of the previous revision when
the policy text and its principles did not change: the verdict was about that very text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

import anyio
import msgspec

from bridge.kernel.errors import Conflict, Unprocessable
from controlplane.certification.certificate import CheckResult, ModelReview, Override, PolicyCertificate, digest, sign
from controlplane.certification.checks import PolicyChecks, Report, Subject, SubjectFailsToEvaluate, package_of
from controlplane.certification.review import AskModel, ReviewTier, ReviewUnavailable, review
from controlplane.infra.recordkeys import RecordKeys

Outcome = Literal["certified", "refused", "denied", "overridden"]
# `await record(outcome, certificate)`: the audit trail's record of a certification (raises when it
# cannot record: the write is then refused, as a decision that cannot be recorded is not served)
CertificationSink = Callable[[Outcome, PolicyCertificate], Awaitable[object]]


class Certified(msgspec.Struct, frozen=True):
    """A signed certificate and its outcome, not yet on the audit trail: the write records it
    (`Certifier.record_issued`) once the bundle with the policy compiled, right before it is stored."""

    certificate: PolicyCertificate
    outcome: Outcome


class CertificationRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a policy write asks of its certification."""

    model_review: ReviewTier | None = None
    """Have a model at this tier review the policy text against its principles (a deny blocks activation)."""
    override: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)] | None = None
    """Why a model review's deny is overridden: the policy is activated anyway, and the override recorded."""


class CertificationRefused(Unprocessable):
    """A deterministic check failed: the policy is not activated."""

    code = "certification_failed"


class ReviewDenied(Conflict):
    """The model review denied the policy and no admin overrode it: the policy is not activated."""

    code = "review_denied"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Certifier:
    def __init__(self, checks: PolicyChecks, keys: RecordKeys, *, ask_model: AskModel | None = None,
                 record: CertificationSink | None = None) -> None:
        self.checks, self.keys = checks, keys
        self.ask_model = ask_model  # None: reviews cannot be asked for (a 503 when they are)
        self.record = record

    async def _refuse(self, outcome: Outcome, cert: PolicyCertificate) -> PolicyCertificate:
        """A refusal is recorded at once: the write ends here."""
        signed = sign(cert, self.keys)
        if self.record is not None:
            await self.record(outcome, signed)
        return signed

    async def record_issued(self, certified: Certified) -> None:
        """Record a certificate that is about to be stored with its revision."""
        if self.record is not None:
            await self.record(certified.outcome, certified.certificate)

    async def certify(self, *, rule_id: str, version: int, name: str, text: str, module: str, tests: str = "",
                      principles: list[str], request: CertificationRequest | None = None,
                      previous: PolicyCertificate | None = None, actor: str = "") -> Certified:
        """The signed certificate of one policy revision, or CertificationRefused / ReviewDenied
        (recorded on the audit trail before they are raised)."""
        request = request or CertificationRequest()
        subject = Subject(kind="rules", name=f"p_{rule_id.replace('-', '')}", module=module, tests=tests,
                          declared=list(principles), written_package=package_of(text))
        try:
            report: Report = await anyio.to_thread.run_sync(self.checks.run, subject)
        except SubjectFailsToEvaluate as exc:  # an error on a probe is a failed check like any other
            report = Report(checks=[CheckResult(name="decisions", passed=False, problems=[exc.message])], passed=False)
        cert = PolicyCertificate(rule_id=rule_id, policy_version=version, policy_name=name, policy_sha256=digest(text),
                                 tests_sha256=digest(tests) if tests else "", principles=sorted(principles),
                                 checks=report.checks, certified=report.passed, issued_at=_now())
        if not report.passed:
            signed = await self._refuse("refused", cert)
            problems = [f"{c.name}: {p}" for c in report.checks for p in c.problems]
            raise CertificationRefused(f"policy {name!r} is not certified, so it is not activated: {'; '.join(problems)}",
                                       details={"certificate": msgspec.to_builtins(signed)})
        verdict, carried = await self._review(cert, report, text, request, previous)
        cert = msgspec.structs.replace(cert, review=verdict)
        if verdict is None or verdict.decision != "deny":
            return Certified(sign(cert, self.keys), "certified")
        if request.override is not None:
            override = Override(reason=request.override, by=actor or "unknown", at=cert.issued_at)
        elif carried is not None:
            override = carried  # the deny of this very text was overridden before: that override stands
        else:
            signed = await self._refuse("denied", msgspec.structs.replace(cert, certified=False))
            raise ReviewDenied(
                f"policy {name!r}: the model review ({verdict.tier}, {verdict.model}) denied it, so it is not "
                f"activated: {'; '.join(map(str, verdict.findings)) or verdict.rationale}. An admin may activate it anyway by sending "
                "certification.override with the reason; the override is recorded",
                details={"certificate": msgspec.to_builtins(signed)})
        return Certified(sign(msgspec.structs.replace(cert, override=override), self.keys), "overridden")

    async def _review(self, cert: PolicyCertificate, report: Report, text: str, request: CertificationRequest,
                      previous: PolicyCertificate | None) -> tuple[ModelReview | None, Override | None]:
        """The verdict for this revision (asked for now, or carried over from the previous revision
        when its text and principles are unchanged) and the override carried with it."""
        if request.model_review is None:
            if previous is None or previous.policy_sha256 != cert.policy_sha256 \
                    or sorted(previous.principles) != cert.principles:
                return None, None
            return previous.review, previous.override
        if self.ask_model is None:
            raise ReviewUnavailable("model review: this control plane has no model client; the policy is not activated")
        verdict = await review(self.ask_model, request.model_review, name=cert.policy_name, text=text,
                               principles=report.principles)
        return verdict, None
