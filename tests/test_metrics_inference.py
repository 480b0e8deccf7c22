"""Model tokens, cost and cache hits reach `/metrics` from real worker replies (emulator over NATS):
through `/api/v1/groq/inference` and through a policy that consults the model in `/api/v1/evaluate`."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.inference.wire import InferReply, Usage
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.metrics import record_reply
from tests.controlplane_helpers import ADMIN_HEADERS, control_plane_with_worker
from tests.stored_policies import MODEL_POLICY


def samples(client: httpx.Client) -> dict:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(snapshot: dict, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in snapshot.items() if n == name and all(dict(labels).get(k) == x for k, x in match.items()))


@pytest.fixture(scope="module")
def cp(tmp_path_factory, nats_server_module, emu_module):
    with control_plane_with_worker(tmp_path_factory.mktemp("cp"), nats_server_module.extra["url"], emu_module.url) as (settings, _, _):
        with httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            yield client


def test_inference_endpoint_records_tokens_cost_and_cache_hits(cp):
    client = cp
    before = samples(client)
    body = {"model_name": "openai/gpt-oss-20b", "prompt": "Is this note harmless? metrics", "max_tokens": 64}
    for _ in range(2):  # the second identical request is answered from the worker's cache
        r = client.post("/api/v1/groq/inference", json=body)
        assert r.status_code == 200, r.text
    after = samples(client)

    def delta(name: str, **match: str) -> float:
        return total(after, name, **match) - total(before, name, **match)

    assert delta("groqpolicy_inference_requests_total", model="openai/gpt-oss-20b") == 2
    assert delta("groqpolicy_inference_requests_total", model="openai/gpt-oss-20b", cached="true") == 1
    assert delta("groqpolicy_model_tokens_total", model="openai/gpt-oss-20b", direction="in") > 0
    assert delta("groqpolicy_model_tokens_total", model="openai/gpt-oss-20b", direction="out") > 0
    assert delta("groqpolicy_model_cost_usd_total", model="openai/gpt-oss-20b") > 0


def test_a_policy_consulting_the_model_records_its_inference(cp):
    client = cp
    r = client.post("/api/v1/policies", json={"name": "ethics-metrics", "policy_type": "ethical_constraints",
                                              "performance_tier": "premium", "opa_policy": MODEL_POLICY,
                                              "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 201, r.text
    before = samples(client)
    r = client.post("/api/v1/evaluate", json={"input_context": {"principal": "alice", "text": "a kind note about metrics"},
                                              "policy_types": ["ethical_constraints"], "performance_tier": "reasoning",
                                              "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    assert r.json()["performance_metrics"]["model_calls"] >= 1
    after = samples(client)
    assert total(after, "groqpolicy_inference_requests_total", tier="fast") - total(
        before, "groqpolicy_inference_requests_total", tier="fast") >= 1
    assert total(after, "groqpolicy_decisions_total", tier="reasoning") - total(
        before, "groqpolicy_decisions_total", tier="reasoning") == 1


def test_record_reply_takes_structs_and_dicts_and_ignores_errors():
    from controlplane.metrics.recorders import INFERENCES, TOKENS

    def count(*labels: str) -> float:
        return INFERENCES.labels(*labels)._value.get()

    before = count("nano", "unit-model", "false")
    tokens_before = TOKENS.labels("nano", "unit-model", "out")._value.get()
    record_reply(InferReply(decision="allow", confidence=1, rationale="", model="unit-model", tier="nano",
                            usage=Usage(prompt_tokens=3, completion_tokens=4, cost_usd=0.01)))
    record_reply({"decision": "allow", "model": "unit-model", "tier": "nano", "usage": {"completion_tokens": 6}})
    record_reply({"error": {"message": "no worker"}})
    assert count("nano", "unit-model", "false") - before == 2
    assert TOKENS.labels("nano", "unit-model", "out")._value.get() - tokens_before == 10
