"""Tier `auto` through the control plane: `/api/v1/groq/inference` says which tier and why, a policy
asking `auto` through the Rego helper carries the reason into its decision and the audit record,
and `/api/v1/groq/models` shows the workers' measured latency beside the catalog's."""

from __future__ import annotations

import httpx
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from tests.controlplane_helpers import ADMIN_HEADERS, control_plane_with_worker
from tests.stored_policies import HEAD

FAST = "openai/gpt-oss-20b"
AUTO_POLICY = HEAD + """import data.groqpolicy.lib.groq

answer := groq.judge_for("ethics-auto", "auto", "Is this text harmful?", {"text": input.text})

a contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "allow"
}

r contains groq.doubt(answer, 0.7) if not groq.confident(answer, 0.7)

decision := doc.document("ethics", {}, r, a, answer.confidence, ["P7-safety-harm-avoidance"])
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory, nats_server_module, emu_module):
    with control_plane_with_worker(tmp_path_factory.mktemp("cp"), nats_server_module.extra["url"], emu_module.url) as (settings, _, _):
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            yield client


def test_inference_with_auto_names_the_tier_and_why(cp):
    body = {"model_name": FAST, "prompt": "Does this long document leak personal data?", "performance_tier": "auto",
            "constitutional_context": {"doc": "lorem ipsum " * 1300}, "deadline_ms": 10000}
    r = cp.post("/api/v1/groq/inference", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model_used"] == FAST and got["performance_tier"] == "nano"
    assert got["route"].startswith("nano: the fastest tier whose model fits ~")
    assert "allam-2-7b: context window 4096 <" in got["route"]


def test_a_policy_asking_auto_carries_the_reason_into_its_decision_and_the_audit_record(cp):
    r = cp.post("/api/v1/policies", json={"name": "ethics-auto", "policy_type": "ethical_constraints",
                                          "performance_tier": "fast", "opa_policy": AUTO_POLICY,
                                          "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 201, r.text
    r = cp.post("/api/v1/evaluate", json={"input_context": {"principal": "alice", "text": "a kind note"},
                                          "policy_types": ["ethical_constraints"], "performance_tier": "reasoning",
                                          "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    evaluation = r.json()
    said = [x for x in evaluation["reasons"] if "[tier auto chose " in x]
    assert said and "the fastest tier whose model fits" in said[0], evaluation["reasons"]
    records = cp.get("/api/v1/audit", params={"limit": 10}).json()["records"]
    mine = next(x["record"] for x in records if x["record"]["evaluation_id"] == evaluation["evaluation_id"])
    assert any("[tier auto chose " in x for x in mine["reasons"])


def test_models_show_measured_latency_beside_the_catalogs(cp):
    assert cp.post("/api/v1/groq/inference", json={"model_name": FAST, "prompt": "measure me",
                                                   "performance_tier": "fast"}).status_code == 200
    rows = cp.get("/api/v1/groq/models").json()["models"]
    fast = next(m for m in rows if m["model_name"] == FAST and m["performance_tier"] == "fast")
    assert fast["typical_latency_ms"] == 150 and fast["context_window"] == 131072
    assert fast["batch_cost_per_token"] == pytest.approx(fast["cost_per_token"] / 2)
    measured = fast["measured_latency"]
    assert measured["count"] >= 1 and measured["workers"] == 1 and measured["p50_ms"] > 0
    unused = next(m for m in rows if m["model_name"] == "qwen/qwen3.8-27b")
    assert unused["measured_latency"] is None
