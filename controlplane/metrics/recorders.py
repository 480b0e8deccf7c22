"""The process's counters and histograms, and the functions the pipeline calls to record.

One registry per process (not prometheus_client's global one, so importing this never collides
with a host application's metrics). Recording sits on the evaluation path, so the label lookups the
hot paths repeat are remembered (`child`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# From 50 µs (in-process WASM on a cached path) to 10 s (a reasoning-tier model call).
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

HTTP_LATENCY = Histogram(
    "groqpolicy_http_request_duration_seconds", "HTTP request latency by route template, method and status",
    ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
DECISIONS = Counter(
    "groqpolicy_decisions_total", "Policy decisions by outcome, performance tier and source",
    ["outcome", "tier", "source"], registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "groqpolicy_decision_duration_seconds", "End-to-end evaluation latency by performance tier (a batch request: one observation, its whole time)",
    ["tier"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)
TIER_TARGET = Counter(
    "groqpolicy_tier_target_total", "Evaluations that met (achieved=true) or missed their tier's latency target",
    ["tier", "achieved"], registry=REGISTRY,
)
INFERENCES = Counter(
    "groqpolicy_inference_requests_total", "Model inferences by tier, model and whether the cache answered",
    ["tier", "model", "cached"], registry=REGISTRY,
)
TOKENS = Counter(
    "groqpolicy_model_tokens_total", "Model tokens by tier, model and direction (in = prompt, out = completion)",
    ["tier", "model", "direction"], registry=REGISTRY,
)
COST = Counter(
    "groqpolicy_model_cost_usd_total", "Model cost in US dollars by tier and model (cached answers cost 0)",
    ["tier", "model"], registry=REGISTRY,
)
ESCALATIONS = Counter(
    "groqpolicy_escalations_total", "Constitutional escalation events published, by decision and stage",
    ["decision", "stage"], registry=REGISTRY,
)
AUDIT_APPENDS = Counter(
    "groqpolicy_audit_records_total", "Audit records appended by this process, by source",
    ["source"], registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "groqpolicy_audit_append_failures_total", "Audit appends JetStream did not acknowledge (the request failed)",
    registry=REGISTRY,
)

# shadow mode (controlplane.impact.shadow): a candidate evaluated beside a live policy
SHADOW_EVALUATIONS = Counter(
    "groqpolicy_shadow_evaluations_total", "Live decisions a shadow candidate was evaluated on, by outcome",
    ["policy", "outcome"], registry=REGISTRY,
)
SHADOW_DIVERGENCE = Gauge(
    "groqpolicy_shadow_divergence_ratio", "Share of compared decisions where the shadow candidate decided otherwise",
    ["policy"], registry=REGISTRY,
)
REPLAY_RECORDED = Counter(
    "groqpolicy_replay_entries_total", "Decisions and judgments the replay store published or dropped",
    ["outcome"], registry=REGISTRY,
)
DECISION_LOG_EVENTS = Counter(
    "groqpolicy_decision_log_events_total",
    "OPA decision-log events by outcome: stored, repeated (a different event under a decision id already "
    "stored: stored too, and flagged) or rejected (refused, an audit record says why)",
    ["outcome"], registry=REGISTRY,
)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: prometheus_client validates and looks labels up on every
    call, and the hot paths ask for the same few label sets on every request."""
    key = (id(metric), labels)
    found = _CHILDREN.get(key)
    if found is None:
        found = _CHILDREN[key] = metric.labels(*labels)
    return found


def record_decisions(outcomes: dict[str, int], tier: str, latency_s: float, *, source: str, met: int, missed: int) -> None:
    """One request's evaluations (a batch's, or one): counts per outcome, tier targets met and
    missed, one latency observation (the request's)."""
    for outcome, n in outcomes.items():
        child(DECISIONS, outcome, tier, source).inc(n)
    child(DECISION_LATENCY, tier).observe(latency_s)
    if met:
        child(TIER_TARGET, tier, "true").inc(met)
    if missed:
        child(TIER_TARGET, tier, "false").inc(missed)


def record_inference(tier: str, model: str, tokens_in: int, tokens_out: int, cost: float, cached: bool) -> None:
    """One model consultation; the cache hit rate is inference_requests_total{cached="true"} / all."""
    INFERENCES.labels(tier, model, "true" if cached else "false").inc()
    if tokens_in:
        TOKENS.labels(tier, model, "in").inc(tokens_in)
    if tokens_out:
        TOKENS.labels(tier, model, "out").inc(tokens_out)
    if cost:
        COST.labels(tier, model).inc(cost)


def record_escalation(decision: str, stage: str) -> None:
    ESCALATIONS.labels(decision, stage).inc()


def record_audit_append(source: str, count: int = 1, failed: bool = False) -> None:
    if failed:
        AUDIT_FAILURES.inc(count)
    else:
        child(AUDIT_APPENDS, source).inc(count)


def record_decision_log_events(*, stored: int, repeated: int, rejected: int) -> None:
    """One decision-log upload's events (`stored` counts the repeated ones too)."""
    for outcome, n in (("stored", stored), ("repeated", repeated), ("rejected", rejected)):
        if n:
            child(DECISION_LOG_EVENTS, outcome).inc(n)


def _field(value: object, name: str) -> Any:
    """`name` of a decoded JSON object or of a struct; None when it has none."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def record_reply(reply: object) -> None:
    """One inference-worker reply (`bridge.inference.wire.InferReply` or its JSON object): tier, model,
    tokens, cost and whether the cache answered. Anything else (an error reply) is ignored."""
    model, tier = _field(reply, "model"), _field(reply, "tier")
    if not isinstance(model, str) or not isinstance(tier, str):
        return
    usage = _field(reply, "usage")
    record_inference(tier, model, int(_field(usage, "prompt_tokens") or 0), int(_field(usage, "completion_tokens") or 0),
                     float(_field(usage, "cost_usd") or 0.0), bool(_field(reply, "cached")))


def record_shadow(policy: str, outcome: str, ratio: float) -> None:
    """One shadow comparison (`same`, `diverged`, `error`) and the candidate's divergence rate now."""
    child(SHADOW_EVALUATIONS, policy, outcome).inc()
    child(SHADOW_DIVERGENCE, policy).set(ratio)


def record_shadow_ratio(policy: str, ratio: float) -> None:
    """A candidate's divergence rate over the deployment, as another process's counters moved it."""
    child(SHADOW_DIVERGENCE, policy).set(ratio)


def forget_shadow(policy: str) -> None:
    """A shadow promoted or discarded: its rate is no longer reported."""
    for outcome in ("same", "diverged", "error"):
        _CHILDREN.pop((id(SHADOW_EVALUATIONS), (policy, outcome)), None)
    _CHILDREN.pop((id(SHADOW_DIVERGENCE), (policy,)), None)
    try:
        SHADOW_DIVERGENCE.remove(policy)
    except KeyError:
        pass
