"""The pipeline's rules, as pure functions: what a policy's answer means, how policies' outcomes
combine into one decision, what the constitution's documents say, and the response they make.

Fail closed throughout: anything a policy returns that is not a decision document (undefined, a
number, an unknown decision) is deny; deny overrides review overrides allow
(`bridge.kernel.vocabulary.DECISION_RANK`); no applicable policy is deny; post-validation can only
make a decision stricter.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, DECISION_RANK, TIER_RANK, Decision
from bridge.opawasm import UNDEFINED
from controlplane.evaluation.schemas import (
    ConstitutionalValidation,
    EvaluateResponse,
    PerformanceMetrics,
    PolicyResult,
    Violation,
)
from controlplane.policies.schemas import PolicyRecord

_DECISIONS: dict[str, Decision] = {"allow": "allow", "review": "review", "deny": "deny"}
_show = msgspec.json.Encoder(order="deterministic").encode


def as_decision(value: Any) -> Decision | None:
    """`value` when it is one of the three decisions, else None (a list or a dict is not one)."""
    return _DECISIONS.get(value) if isinstance(value, str) else None


def confidence_of(value: Any) -> float | None:
    """A confidence as the constitution takes it: a number in [0, 1] (not a boolean), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def normalise(value: Any, name: str) -> tuple[Decision, float, list[str]]:
    """(decision, confidence, reasons) from whatever a policy returned; anything unusable is deny."""
    if value is UNDEFINED:
        return "deny", 0.0, [f"deny: policy {name!r}: decision is undefined"]
    if isinstance(value, dict):
        decided = value.get("decision")
        decided = _DECISIONS.get(decided) if isinstance(decided, str) else None  # as_decision, inline: per policy per context
        if decided is not None:
            conf = confidence_of(value.get("confidence"))
            reasons = [r for r in value.get("reasons") or [] if isinstance(r, str)]
            return decided, 0.0 if conf is None else conf, reasons
    if (decided := as_decision(value)) is not None:
        return decided, 1.0, [f"{decided}: policy {name!r} decided {decided}" if decided != "allow" else f"policy {name!r} decided allow"]
    if isinstance(value, bool):
        return ("allow", 1.0, [f"policy {name!r} allowed"]) if value else ("deny", 1.0, [f"deny: policy {name!r} denied"])
    shown = _show(value).decode()[:200]
    return "deny", 0.0, [f"deny: policy {name!r} returned no decision document (got {shown})"]


def wants_model(record: PolicyRecord, value: Any, decision: Decision) -> bool:
    """The pipeline's model stage applies: the document asks for it and the policy has a model configured."""
    return (decision != "deny" and record.groq_model_config is not None and isinstance(value, dict)
            and value.get("needs_model") is True)


# Per-context records of the hot path are not tracked by the garbage collector (`gc=False`): they
# never take part in a reference cycle, and a batch makes hundreds of them per call.
class PolicyOutcome(msgspec.Struct, gc=False):
    """One policy's part in a decision: its result, the seconds it waited on models, its reasons."""

    result: PolicyResult
    model_seconds: float
    reasons: list[str]


def outcome(record: PolicyRecord, value: Any, error: str, wasm_us: float, decision: Decision, confidence: float,
            reasons: list[str], replies: list[dict[str, Any]] | None = None, model_seconds: float = 0.0) -> PolicyOutcome:
    """A policy's outcome; `replies` are the model calls it made (the meter's), if any."""
    result = PolicyResult(
        rule_id=record.rule_id, name=record.name, policy_type=record.policy_type, decision=decision,
        confidence_score=confidence, opa_evaluation_result=None if error or value is UNDEFINED else value,
        groq_inference_result=replies if replies is not None else [], wasm_execution_time_us=round(wasm_us, 2),
        error=error,
    )
    return PolicyOutcome(result, model_seconds, reasons)


def settled(record: PolicyRecord, value: Any, error: str, wasm_us: float, replies: list[dict[str, Any]] | None = None,
            model_seconds: float = 0.0) -> PolicyOutcome | None:
    """A policy's outcome when its rules settle it (no model stage), else None."""
    if error:
        return outcome(record, value, error, wasm_us, "deny", 0.0,
                       [f"deny: policy {record.name!r} could not be evaluated: {error}"], replies, model_seconds)
    decision, confidence, reasons = normalise(value, record.name)
    if wants_model(record, value, decision):
        return None
    return outcome(record, value, error, wasm_us, decision, confidence, reasons, replies, model_seconds)


def applicable(records: list[PolicyRecord], policy_types: list[str], tier: str) -> list[PolicyRecord]:
    """The active policies of `policy_types` (empty: any) at `tier` or a faster one, by priority."""
    limit = TIER_RANK[tier]
    types = set(policy_types)
    chosen = [r for r in records if r.is_active and (not types or r.policy_type in types)
              and TIER_RANK[r.performance_tier] <= limit]
    return sorted(chosen, key=lambda r: (-r.priority, r.created_at, str(r.rule_id)))


# ---- the constitution's documents ---------------------------------------------------------------
def violations(doc: Any, stage: str) -> list[Violation]:
    if not isinstance(doc, dict):
        return []
    return [Violation(principle=str(v.get("principle", "")), severity=str(v.get("severity", "")),
                      message=str(v.get("message", "")), stage=stage)
            for v in doc.get("violations") or [] if isinstance(v, dict)]


# The two outcomes below are memoised per revision (`controlplane.evaluation.constitution`, up to
# thousands of entries) and live as long as the process serves that revision: they hold strings,
# numbers and tuples only, which the garbage collector stops tracking, so no full collection walks
# the memos (a list and a dict per entry did).
class PreOutcome(msgspec.Struct, frozen=True, gc=False):
    """What the pipeline takes from a pre-validation document (`pre_outcome`), shared between calls."""

    decision: Decision
    reasons: tuple[str, ...]
    violations: tuple[Violation, ...]


def pre_outcome(doc: Any) -> PreOutcome:
    """A pre-validation document's outcome; a decision that is not one of the three is deny."""
    if not isinstance(doc, dict):
        return PreOutcome("deny", (), ())
    return PreOutcome(as_decision(doc.get("decision", "deny")) or "deny", _strings(doc.get("reasons")),
                      tuple(violations(doc, "pre_validation")))


class PostOutcome(msgspec.Struct, frozen=True, gc=False):
    """What the pipeline takes from a post-validation document (`post_outcome`; many evaluations
    propose the same decision). `reasons`/`confidence` None: keep the proposal's."""

    decision: Decision
    violations: tuple[Violation, ...]
    reasons: tuple[str, ...] | None
    confidence: float | None


def post_outcome(doc: Any) -> PostOutcome:
    if not isinstance(doc, dict):
        doc = {}
    reasons = doc.get("reasons")
    return PostOutcome(as_decision(doc.get("decision", "deny")) or "deny", tuple(violations(doc, "post_validation")),
                       _strings(reasons) if isinstance(reasons, list) else None, confidence_of(doc.get("confidence")))


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(r for r in value if isinstance(r, str)) if isinstance(value, list) else ()


# ---- synthesis --------------------------------------------------------------------------------
class Proposal(msgspec.Struct, gc=False):
    """Stage 4's outcome for one context: what its policies decide together, before post-validation."""

    decision: Decision
    confidence: float
    reasons: list[str]
    results: list[PolicyResult]
    model_seconds: float
    wasm_us: float  # the context's WASM time so far (pre-validation and its policies)
    model_based: bool  # a model's answer went into it (post-validation asks for a human path then)


def propose(outcomes: Sequence[PolicyOutcome], wasm_us: float, policy_types: list[str], tier: str) -> Proposal:
    """Stage 4 for a context that passed pre-validation: deny overrides review overrides allow; the
    confidence is the least confident among the policies that produced the outcome; with no
    applicable policy, deny."""
    results: list[PolicyResult] = []
    reasons: list[str] = []
    model_seconds = 0.0
    model_based = False
    decision: Decision = "allow"
    rank = 0
    for o in outcomes:
        res = o.result
        results.append(res)
        model_seconds += o.model_seconds
        wasm_us += res.wasm_execution_time_us
        reasons.extend(o.reasons)
        if res.groq_inference_result and not model_based:
            model_based = any(r.get("status") == 200 for r in res.groq_inference_result)
        if DECISION_RANK[res.decision] > rank:
            decision, rank = res.decision, DECISION_RANK[res.decision]
    if not results:
        kinds = ", ".join(policy_types) or "any type"
        return Proposal("deny", 1.0, [f"deny: no active policy applies ({kinds}, tier {tier} or faster)"], results,
                        model_seconds, wasm_us, model_based)
    confidence = 1.0
    for res in results:
        if res.decision == decision and res.confidence_score < confidence:
            confidence = res.confidence_score
    # as in lib.decision: deny reasons, then review reasons; an allow lists its own reasons
    if decision != "allow":
        reasons = [r for r in reasons if r.startswith("deny:")] + [r for r in reasons if r.startswith("review:")]
    return Proposal(decision, confidence, reasons, results, model_seconds, wasm_us, model_based)


def refused(pre: PreOutcome, wasm_us: float) -> Proposal:
    """The proposal for a context that failed pre-validation: deny, and no policy ran."""
    return Proposal("deny", 1.0, ["deny: Constitutional pre-validation failed", *pre.reasons], [], 0.0, wasm_us, False)


class Frame(msgspec.Struct, frozen=True, gc=False):
    """What every response of one call shares."""

    tier: str
    target_ms: float  # the tier's latency target
    revision: str  # the bundle revision the call evaluated on
    chosen_ids: list[uuid.UUID]  # the applicable policies
    explain: bool


def verdict(proposal: Proposal, post: PostOutcome | None) -> Decision:
    """The decision after stage 5: post-validation can only make the proposal's stricter."""
    if post is not None and DECISION_RANK[post.decision] > DECISION_RANK[proposal.decision]:
        return post.decision
    return proposal.decision


def respond(evaluation_id: uuid.UUID, proposal: Proposal, pre: PreOutcome, post: PostOutcome | None, post_us: float,
            frame: Frame, echo: dict[str, Any] | None) -> EvaluateResponse:
    """Stage 5's verdict applied to a proposal, and the response (its total time is filled in once
    the whole call is done)."""
    decision, confidence, reasons = verdict(proposal, post), proposal.confidence, proposal.reasons
    found = list(pre.violations)
    post_decision: Decision | None = None
    if post is not None:
        post_decision = post.decision
        if post.violations:
            found += post.violations
        if post.reasons is not None:
            reasons = list(post.reasons)
        if post.confidence is not None:
            confidence = post.confidence
    results = proposal.results
    model_calls = 0
    for res in results:
        if res.groq_inference_result:
            model_calls += len(res.groq_inference_result)
    model_s = proposal.model_seconds
    metrics = PerformanceMetrics(
        total_latency_ms=0.0, groq_inference_time_ms=round(model_s * 1000, 4) if model_s else 0.0,
        opa_evaluation_time_ms=0.0, wasm_execution_time_us=round(proposal.wasm_us + post_us, 2),
        performance_tier=frame.tier, target_latency_ms=frame.target_ms, target_achieved=False, model_calls=model_calls,
    )
    compliance = ConstitutionalValidation(is_compliant=not found, pre_validation=pre.decision,
                                          post_validation=post_decision, violations=found)
    return EvaluateResponse(
        evaluation_id=evaluation_id, decision=decision, confidence_score=round(min(1.0, max(0.0, confidence)), 6),
        applicable_policies=frame.chosen_ids if pre.decision == "allow" else [],
        constitutional_compliance=compliance, performance_metrics=metrics, policy_results=results,
        reasons=reasons, bundle_revision=frame.revision, constitutional_hash=CONSTITUTIONAL_HASH,
        explanation=explain_text(decision, confidence, results, found, pre.decision) if frame.explain else None,
        input_context=echo,
    )


def explain_text(decision: str, confidence: float, results: list[PolicyResult], found: list[Violation], pre: str) -> str:
    lines = [f"Decision: {decision} (confidence {confidence:.2f})."]
    if pre != "allow":
        lines.append("Constitutional pre-validation failed; no policy was evaluated.")
    for res in results:
        doc = res.opa_evaluation_result if isinstance(res.opa_evaluation_result, dict) else {}
        reasons = "; ".join(r for r in doc.get("reasons", []) if isinstance(r, str)) or res.error or "no reasons given"
        lines.append(f"Policy {res.name!r} ({res.policy_type}): {res.decision} (confidence {res.confidence_score:.2f}): {reasons}.")
        for reply in res.groq_inference_result:
            if reply.get("rationale"):
                lines.append(f"  Model {reply.get('model')} ({reply.get('tier')}) judged {reply.get('decision')} "
                             f"with confidence {reply.get('confidence')}: {reply['rationale']}")
            elif reply.get("error"):
                lines.append(f"  Model call failed (HTTP {reply.get('status')}): {reply['error']}")
    for v in found:
        lines.append(f"Constitution ({v.stage}, {v.principle}, {v.severity}): {v.message}.")
    return "\n".join(lines)
