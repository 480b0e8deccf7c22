"""`/metrics` in Prometheus text format: request latency per route, decisions by outcome and tier,
inference tokens/cost/cache hits, bundle revisions and agent status read at scrape time."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.metrics import record_inference
from tests.controlplane_helpers import ADMIN_TOKEN, AGENT_TOKEN, EVALUATE_TOKEN, bearer


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_latency_per_route_template(cp):
    client, _ = cp
    before = scrape(client)
    for _ in range(3):
        client.get("/bundles/nope", headers=bearer(AGENT_TOKEN))
    client.get("/api/v1/policies")  # 401 is timed too
    after = scrape(client)
    key = {"route": "/bundles/{name}", "method": "GET", "status": "404"}
    assert value(after, "groqpolicy_http_request_duration_seconds_count", **key) - value(
        before, "groqpolicy_http_request_duration_seconds_count", **key) == 3
    assert value(after, "groqpolicy_http_request_duration_seconds_bucket", **key, le="+Inf") >= 3
    assert value(after, "groqpolicy_http_request_duration_seconds_count", route="/api/v1/policies", method="GET", status="401") >= 1


def test_decisions_by_outcome_and_tier(cp):
    client, _ = cp
    before = scrape(client)
    for tier in ("fast", "fast", "premium"):
        r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
            "input_context": {"principal": "alice"}, "policy_types": ["security_policies"], "performance_tier": tier,
            "constitutional_hash": CONSTITUTIONAL_HASH})
        assert r.status_code == 200
        outcome = r.json()["decision"]
    assert client.get("/api/v1/audit", headers=bearer(ADMIN_TOKEN)).status_code == 200  # the spooled records are in JetStream now
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("groqpolicy_decisions_total", outcome=outcome, tier="fast", source="api") == 2
    assert delta("groqpolicy_decisions_total", outcome=outcome, tier="premium", source="api") == 1
    assert delta("groqpolicy_decision_duration_seconds_count", tier="fast") == 2
    achieved = delta("groqpolicy_tier_target_total", tier="fast", achieved="true") + delta(
        "groqpolicy_tier_target_total", tier="fast", achieved="false")
    assert achieved == 2
    assert delta("groqpolicy_audit_records_total", source="api") == 3


def test_a_batch_counts_each_evaluation_and_observes_its_time_once(cp):
    client, _ = cp
    before = scrape(client)
    r = client.post("/api/v1/evaluate/batch", headers=bearer(EVALUATE_TOKEN), json={
        "batch_contexts": [{"principal": "alice"}, {"principal": "bob"}, {"no": "principal"}],
        "policy_types": ["security_policies"], "performance_tier": "balanced", "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    outcomes: dict[str, int] = {}
    for x in r.json()["results"]:
        outcomes[x["decision"]] = outcomes.get(x["decision"], 0) + 1
    assert outcomes.get("deny", 0) >= 1  # the context without a principal
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for outcome, n in outcomes.items():
        assert delta("groqpolicy_decisions_total", outcome=outcome, tier="balanced", source="batch") == n
    assert delta("groqpolicy_decision_duration_seconds_count", tier="balanced") == 1
    assert delta("groqpolicy_tier_target_total", tier="balanced", achieved="true") + delta(
        "groqpolicy_tier_target_total", tier="balanced", achieved="false") == 3


def test_inference_tokens_cost_and_cache_hits(cp):
    client, _ = cp
    before = scrape(client)
    record_inference("fast", "openai/gpt-oss-20b", 120, 30, 0.0004, cached=False)
    record_inference("fast", "openai/gpt-oss-20b", 0, 0, 0.0, cached=True)
    record_inference("fast", "openai/gpt-oss-20b", 0, 0, 0.0, cached=True)
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    m = {"tier": "fast", "model": "openai/gpt-oss-20b"}
    assert delta("groqpolicy_inference_requests_total", **m, cached="true") == 2
    assert delta("groqpolicy_inference_requests_total", **m, cached="false") == 1
    assert delta("groqpolicy_model_tokens_total", **m, direction="in") == 120
    assert delta("groqpolicy_model_tokens_total", **m, direction="out") == 30
    assert delta("groqpolicy_model_cost_usd_total", **m) == pytest.approx(0.0004)


def test_bundle_and_agent_gauges_are_read_at_scrape_time(cp):
    client, services = cp
    services.store.activate("mbundle", "rev-1", {"rego": b"one"})
    services.store.activate("mbundle", "rev-2", {"rego": b"two"})
    status = {"labels": {"id": "uuid-9", "agent": "metrics-agent"}, "bundles": {
        "mbundle": {"active_revision": "rev-2", "code": ""},
        "broken": {"active_revision": "", "code": "bundle_error", "message": "signature verification failed"}}}
    assert client.post("/status", json=status, headers=bearer(AGENT_TOKEN)).status_code == 204
    s = scrape(client)
    assert value(s, "groqpolicy_bundle_active_info", bundle="mbundle", target="rego", revision="rev-2") == 1
    assert value(s, "groqpolicy_bundle_active_info", bundle="mbundle", target="rego", revision="rev-1") == 0  # not active
    assert value(s, "groqpolicy_bundle_revisions", bundle="mbundle") == 2
    assert value(s, "groqpolicy_agent_bundle_ok", agent="metrics-agent", bundle="mbundle", revision="rev-2") == 1
    assert value(s, "groqpolicy_agent_bundle_ok", agent="metrics-agent", bundle="broken", revision="") == 0
    assert value(s, "groqpolicy_agents") >= 1
    assert value(s, "groqpolicy_agent_status_reports_total", agent="metrics-agent") == 1
    assert value(s, "groqpolicy_agent_last_seen_timestamp_seconds", agent="metrics-agent") > 0
