"""The replay store's parts: what a judgment is keyed by, redaction, agents' `nd_builtin_cache`;
and, against a real nats-server, the off switch, the per-type opt-out and agents' decision logs
replayed through a candidate."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.evaluation.schemas import ConstitutionalValidation, EvaluateResponse, PerformanceMetrics, PolicyResult
from controlplane.impact import store
from controlplane.impact.records import REDACTED, Recorded, agent_judgments, judgment_key, redact
from controlplane.impact.replay import Oracle
from controlplane.impact.tap import recorded
from controlplane.policies import rego
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    AGENT_TOKEN,
    bearer,
    gzip_json,
    make_settings,
    running_control_plane,
)
from tests.test_impact import LIMIT, TIGHTER

BRIDGE = "http://127.0.0.1:8016"
ASKED = {"question": "Is this text harmful?", "context": {"text": "hi"}, "policy": "ethics",
         "constitutional_hash": CONSTITUTIONAL_HASH, "deadline_ms": 1500}


def test_a_judgment_is_keyed_by_what_decides_its_answer_only():
    key = judgment_key("fast", ASKED)
    assert key == judgment_key("fast", {**ASKED, "deadline_ms": 900})  # the deadline does not change the answer
    assert key == judgment_key("fast", msgspec.json.encode(ASKED))  # the pipeline's own model stage sends bytes
    assert key != judgment_key("balanced", ASKED)
    assert key != judgment_key("fast", {**ASKED, "question": "Is this text harmful or rude?"})
    assert key != judgment_key("fast", {**ASKED, "context": {"text": "hi!"}})
    assert key != judgment_key("fast", {**ASKED, "model": "openai/gpt-oss-20b"})


class _SlowModel:
    """A ReAsk whose answer takes a moment, counting what it is asked."""

    name = "online"

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def call(self, tier, body, timeout):
        with self.lock:
            self.calls += 1
        time.sleep(0.2)  # long enough for every other thread to want the same judgment meanwhile
        return 200, {"decision": "allow", "confidence": 0.9, "usage": {"cost_usd": 0.001}}

    async def request(self, tier, body):
        raise AssertionError("not on this path")


def test_the_same_judgment_wanted_by_threads_at_once_is_asked_once():
    """The `http.send` path: evaluation threads that want the same judgment while it is being asked
    wait for that answer; a different judgment is asked on its own."""
    model = _SlowModel()
    oracle = Oracle({}, model)
    other = dict(ASKED, context={"text": "something else"})
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda body: oracle.transport("fast", body, 5.0), [ASKED] * 7 + [other]))
    assert model.calls == 2 and len(oracle.asked) == 2 and oracle.joined == 6
    assert all(status == 200 and reply["decision"] == "allow" for status, reply in found)
    assert oracle.cost_usd == pytest.approx(0.002)  # each judgment's cost once
    assert oracle.transport("fast", ASKED, 5.0)[0] == 200 and model.calls == 2  # then from memory


class _GarbledModel:
    """A model whose 200 reply is not JSON, slowly enough that other decisions join the ask."""

    name = "online"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, tier, body, timeout):
        raise AssertionError("not on this path")

    async def request(self, tier, body):
        self.calls += 1
        await asyncio.sleep(0.2)
        return 200, b"<html>bad gateway</html>", 0


def test_an_unreadable_answer_fails_every_waiter_instead_of_hanging_them():
    """The model stage's path: a 200 that is not JSON is no answer. The decision that asked and the
    ones waiting for the same judgment all get the failure (which the policy reads as `review`),
    and a later ask is not stuck behind a future nobody will resolve."""
    model = _GarbledModel()
    oracle = Oracle({}, model)
    body = msgspec.json.encode(ASKED)

    async def main():
        first = await asyncio.wait_for(asyncio.gather(*(oracle.ask("fast", body) for _ in range(5))), 10)
        again = await asyncio.wait_for(oracle.ask("fast", body), 10)
        return first, again

    first, again = asyncio.run(main())
    assert [status for status, _, _ in first] == [502] * 5 and again[0] == 502
    assert model.calls == 2 and oracle.joined == 4 and oracle.failed == 2 and not oracle.asked


def test_redaction_reaches_every_depth_and_keeps_the_rest():
    doc = {"text": "secret", "nested": [{"email": "a@b", "amount": 3}], "amount": 1}
    assert redact(doc, {"text", "email"}) == {"text": REDACTED, "nested": [{"email": REDACTED, "amount": 3}], "amount": 1}


def _cache(url: str, body: dict, reply: dict, status: int = 200) -> dict:
    request = {"method": "POST", "url": url, "body": body, "timeout": "2s"}
    return {"http.send": {json.dumps([request]): {"status_code": status, "body": reply}}}


def test_agents_judgments_come_from_their_nd_builtin_cache():
    reply = {"decision": "deny", "confidence": 0.9, "rationale": "r", "model": "m", "tier": "fast"}
    (found,) = agent_judgments(_cache(f"{BRIDGE}/v1/infer/fast", ASKED, reply), BRIDGE)
    assert (found.key, found.tier, found.reply) == (judgment_key("fast", ASKED), "fast", reply)
    assert agent_judgments(_cache("http://elsewhere/v1/infer/fast", ASKED, reply), BRIDGE) == []
    assert agent_judgments(_cache(f"{BRIDGE}/v1/infer/fast", ASKED, reply, status=503), BRIDGE) == []
    assert agent_judgments({"http.send": {"not json": {}}}, BRIDGE) == []
    assert agent_judgments(None, BRIDGE) == []


def _policy(client: httpx.Client, name: str, kind: str) -> str:
    r = client.post("/api/v1/policies", json={"name": name, "policy_type": kind, "opa_policy": LIMIT,
                                              "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 201, r.text
    return r.json()["rule_id"]


def _evaluate(client: httpx.Client, kind: str, amount: int) -> None:
    r = client.post("/api/v1/evaluate", json={"input_context": {"principal": {"id": "p"}, "amount": amount},
                                              "policy_types": [kind], "performance_tier": "fast",
                                              "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_opted_out_types_are_never_recorded_and_agents_decisions_replay(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], replay_opt_out="risk_management")
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
        _policy(client, "limits", "risk_management")
        guarded = _policy(client, "guarded", "security_policies")
        for amount in (10, 60, 200):
            _evaluate(client, "risk_management", amount)
            _evaluate(client, "security_policies", amount)
        path = rego.decision_path(uuid.UUID(guarded))
        event = {"decision_id": "d-1", "path": path, "input": {"principal": {"id": "p"}, "amount": 70},
                 "result": {"decision": "allow"}, "bundles": {"groqpolicy": {"revision": "r"}},
                 "nd_builtin_cache": _cache(f"{settings.bridge_url}/v1/infer/fast", ASKED, {"decision": "allow"})}
        r = client.post("/logs", content=gzip_json([event]),
                        headers={**bearer(AGENT_TOKEN), "Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert r.status_code == 204, r.text
        deadline = time.monotonic() + 20
        while services.replay.published < 5:  # 3 decisions, the agent's, its judgment
            assert time.monotonic() < deadline, services.replay.published
            time.sleep(0.05)
        report = client.post("/api/v1/impact", json={"candidate": {"rule_id": guarded, "opa_policy": TIGHTER},
                                                     "since_s": 600}).json()
        assert report["decisions"] == 4  # none of risk_management's
        assert report["matrix"]["security_policies"] == {"allow": {"allow": 1, "deny": 2}, "deny": {"deny": 1}}
        agent = client.post("/api/v1/impact", json={"candidate": {"rule_id": guarded, "opa_policy": TIGHTER},
                                                    "count": 1}).json()
        assert agent["matrix"]["*"] == {"allow": {"deny": 1}}  # the agent's decision, on the candidate's entrypoint
        serving = services.runtime.models.loop  # the store's reads run on the serving loop
        found = asyncio.run_coroutine_threadsafe(services.replay.judgments(), serving).result(10)
        assert judgment_key("fast", ASKED) in found


@pytest.mark.slow
def test_the_off_switch_records_nothing_and_impact_says_so(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], replay="off")
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
        rule = _policy(client, "limits", "risk_management")
        _evaluate(client, "risk_management", 10)
        time.sleep(0.3)
        assert services.replay.published == 0
        r = client.post("/api/v1/impact", json={"candidate": {"rule_id": rule, "opa_policy": TIGHTER}, "count": 5})
        assert r.status_code == 409 and "GROQPOLICY_REPLAY=off" in r.json()["error"]["message"]


def _response(decisions: list[tuple[str, str]]) -> EvaluateResponse:
    results = [PolicyResult(rule_id=uuid.uuid4(), name=f"p{k}", policy_type=kind, decision=d, confidence_score=1.0,  # type: ignore[arg-type]
                            opa_evaluation_result=None) for k, (kind, d) in enumerate(decisions)]
    return EvaluateResponse(
        evaluation_id=uuid.uuid4(), decision="deny" if any(d == "deny" for _, d in decisions) else "allow",
        confidence_score=1.0, applicable_policies=[r.rule_id for r in results],
        constitutional_compliance=ConstitutionalValidation(is_compliant=True, pre_validation="allow", post_validation="allow"),
        performance_metrics=PerformanceMetrics(total_latency_ms=1.0, groq_inference_time_ms=0.0, opa_evaluation_time_ms=1.0,
                                               wasm_execution_time_us=12.5, performance_tier="nano", target_latency_ms=5.0,
                                               target_achieved=True),
        policy_results=results, reasons=[], bundle_revision="rev-1", constitutional_hash=CONSTITUTIONAL_HASH)


def test_a_batch_s_replay_entries_each_keep_their_own_decisions():
    responses = [_response([("risk_management", "allow"), ("risk_management", "deny"), ("security_policies", "allow")]),
                 _response([("risk_management", "allow"), ("risk_management", "allow"), ("security_policies", "allow")]),
                 _response([("risk_management", "allow"), ("risk_management", "deny"), ("security_policies", "allow")])]
    contexts = [{"principal": f"p{k}"} for k in range(3)]
    entries = recorded(responses, contexts, source="batch", tier="nano", policy_types=["risk_management"])
    assert [e.id for e in entries] == [str(r.evaluation_id) for r in responses]
    assert [e.input for e in entries] == contexts
    assert [e.by_type for e in entries] == [{"risk_management": "deny", "security_policies": "allow"},
                                            {"risk_management": "allow", "security_policies": "allow"},
                                            {"risk_management": "deny", "security_policies": "allow"}]
    assert [(e.source, e.tier, e.policy_types, e.revision, e.wasm_us) for e in entries] == \
        [("batch", "nano", ["risk_management"], "rev-1", 12.5)] * 3


def test_replay_messages_stay_under_the_size_limit_and_keep_every_entry_in_order(monkeypatch):
    monkeypatch.setattr(store, "MESSAGE_BYTES", 2000)
    entries = [Recorded(id=f"e{k}", ts=1.0, source="api", input={"pad": "x" * (k % 7) * 40}, decision="allow")
               for k in range(101)]
    huge = Recorded(id="huge", ts=1.0, source="batch", input={"pad": "y" * 5000}, decision="deny")
    decisions = [("api", e) for e in entries] + [("batch", huge)]
    messages = store.ReplayStore._messages(decisions, [], [])
    api = [(data, n) for subject, data, n in messages if subject.endswith(".api")]
    assert len(api) > 1 and all(len(data) <= 2000 for data, _ in api)
    assert len(api) <= 2 * -(-sum(len(data) for data, _ in api) // 2000)  # not cut much finer than the limit asks
    found = [e for data, n in api for e in msgspec.json.decode(data, type=list[Recorded])]
    assert [e.id for e in found] == [e.id for e in entries] and sum(n for _, n in api) == 101
    assert [(subject.rsplit(".", 1)[1], n) for subject, data, n in messages if data.startswith(b'[{"id":"huge"')] == [("batch", 1)]


async def test_a_stop_s_last_flush_waits_for_jetstream_once_not_for_every_message(nats_server, tmp_path, monkeypatch, caplog):
    """A JetStream that does not answer (here: something on the replay subjects that never replies, so
    every publish waits out its timeout): the stop's flush waits `STOP_PUBLISH_S` once, then drops and
    counts the rest; a flush while serving tries every message, 5 s each."""
    import nats

    monkeypatch.setattr(store, "MESSAGE_BYTES", 2000)
    nc = await nats.connect(nats_server.extra["url"])
    try:
        async def silent(msg: object) -> None:  # takes every publish, answers none
            pass

        await nc.subscribe("replay.>", cb=silent)
        replay = store.ReplayStore(lambda: nc, make_settings(tmp_path / "state", nats_url=nats_server.extra["url"]))
        entries = [Recorded(id=f"e{k}", ts=1.0, source="api", input={"pad": "x" * 400}, decision="allow") for k in range(12)]
        assert len(store.ReplayStore._messages([("api", e) for e in entries], [], [])) >= 3
        replay.submit_decisions(entries)
        t0 = time.monotonic()
        await replay.flush(stopping=True)
        assert time.monotonic() - t0 < 5  # one timeout of STOP_PUBLISH_S (2 s), not one per message
        assert replay.dropped == 12 and replay.published == 0
        assert "replay store: 12 entries dropped (TimeoutError" in caplog.text
    finally:
        await nc.close()
