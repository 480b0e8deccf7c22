"""The same input through `/api/v1/evaluate` (in-process WASM) and through a real OPA agent gives the
same decision, for every example policy and every one of its example inputs.

The agent is configured from the control plane's own `/api/v1/opa/config` and pulls the signed
`groqpolicy` bundle that carries the stored policies; model calls go agent -> gateway -> NATS ->
worker -> groq SDK -> emulator on one side and evaluator -> NATS -> worker on the other.
`/api/v1/opa/evaluate` is checked on both engines too (`use_wasm` true and false)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bridge.inference.gateway import create_app as create_gateway
from bridge.inference.serving import ThreadServer
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_opa_agent
from tests.bridge_helpers import BRIDGE_TOKEN, REPO_ROOT, Emu, spawn_worker, wait_for_workers
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.policy_examples import load_policy_examples

pytestmark = pytest.mark.slow
H = CONSTITUTIONAL_HASH
def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_wasm_and_opa_agent_agree_on_every_example(tmp_path, nats_server, opa_bin):
    url = nats_server.extra["url"]
    examples = load_policy_examples(opa_bin)
    assert sorted(examples) == sorted(p.name for p in (REPO_ROOT / "rego" / "policies").iterdir())
    emu = Emu()
    worker = spawn_worker(url, emu.url, tmp_path / "worker.log")
    gateway = ThreadServer(create_gateway(url, token=BRIDGE_TOKEN))
    (tmp_path / "bridge-token").write_text(BRIDGE_TOKEN)
    agent = None
    try:
        asyncio.run(wait_for_workers(url, 1))
        agent_port = free_port()
        settings = make_settings(tmp_path / "state", compile_on_start=True, nats_url=url, bridge_url=gateway.url,
                                 opa_url=f"http://127.0.0.1:{agent_port}", bridge_token_file=tmp_path / "bridge-token")
        with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as cp:
            ids = {}
            for ptype in examples:
                rego = (REPO_ROOT / "rego" / "policies" / ptype / "policy.rego").read_text()
                r = cp.post("/api/v1/policies", json={"name": f"example {ptype}", "policy_type": ptype, "opa_policy": rego,
                                                      "performance_tier": "nano", "constitutional_hash": H})
                assert r.status_code == 201, r.text
                ids[ptype] = r.json()
            revision = ids[ptype]["bundle_revision"]
            config = cp.get("/api/v1/opa/config", params={"agent_id": "parity", "min_delay_s": 1, "max_delay_s": 2}).text
            (tmp_path / "agent.yaml").write_text(config)
            # as `groqpolicy up` runs it: its REST API admits only the deployment's tokens, and the
            # control plane presents its evaluate token for use_wasm false
            agent = start_opa_agent(tmp_path / "agent.yaml", tmp_path / "opa", port=agent_port, authenticated=True)
            opa = httpx.Client(base_url=agent.extra["url"], timeout=30, headers=ADMIN_HEADERS)
            wait_for(lambda: opa.get("/v1/data/system/bundles").status_code == 200 and
                     opa.get("/v1/status").status_code != 500 and
                     opa.post(f"/v1/data/{ids[ptype]['entrypoint']}", json={"input": {}}).json().get("result"),
                     60, f"the agent to activate {revision}")

            compared = 0
            for ptype, cases in examples.items():
                entry = ids[ptype]["entrypoint"]
                for case, example in cases.items():
                    what = f"{ptype}/{case}"
                    agent_doc = opa.post(f"/v1/data/{entry}", json={"input": example}).json()["result"]
                    # the example's own expectation holds on the agent (cases are named after their decision)
                    if case in ("allow", "deny", "review"):
                        assert agent_doc["decision"] == case, what
                    # 1. /api/v1/opa/evaluate on both engines
                    wasm = cp.post("/api/v1/opa/evaluate", json={"policy_id": ids[ptype]["rule_id"], "input_data": example}).json()
                    via_opa = cp.post("/api/v1/opa/evaluate", json={"policy_id": ids[ptype]["rule_id"], "input_data": example,
                                                                    "use_wasm": False}).json()
                    assert (wasm["engine"], via_opa["engine"]) == ("wasm", "opa"), what
                    assert wasm["result"] == via_opa["result"] == agent_doc, what
                    assert wasm["policy_version"] == via_opa["policy_version"], what
                    # 2. the whole pipeline against the agent's own pre-validation, policy and post-validation
                    out = cp.post("/api/v1/evaluate", json={"input_context": example, "policy_types": [ptype],
                                                            "constitutional_hash": H}).json()
                    pre = opa.post("/v1/data/groqpolicy/constitution/pre_validation",
                                   json={"input": {**example, "constitutional_hash": H}}).json()["result"]
                    if pre["decision"] != "allow":
                        expected = "deny"
                    else:
                        assert out["policy_results"][0]["opa_evaluation_result"] == agent_doc, what
                        model_based = any(r["status"] == 200 for r in out["policy_results"][0]["groq_inference_result"])
                        proposed = {"decision": agent_doc["decision"], "confidence": agent_doc["confidence"],
                                    "reasons": agent_doc["reasons"], "constitutional_hash": H, "model_based": model_based}
                        post_input = {"decision": proposed, "constitutional_hash": H}
                        if isinstance(example.get("oversight"), dict):
                            post_input["oversight"] = example["oversight"]
                        post = opa.post("/v1/data/groqpolicy/constitution/post_validation", json={"input": post_input}).json()["result"]
                        expected = post["decision"]
                        assert out["confidence_score"] == pytest.approx(post["confidence"]), what
                    assert out["decision"] == expected, f"{what}: pipeline {out['decision']}, agent {expected}"
                    compared += 1
            assert compared == sum(len(c) for c in examples.values()) >= 21
            # a model-decided example really reached the model on both sides
            assert emu.calls() >= 1
    finally:
        if agent is not None:
            agent.stop()
        gateway.stop()
        worker.kill()
        worker.wait()
        emu.stop()
