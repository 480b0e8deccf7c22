"""A replay's pipeline asks a changed judgment anew inside the policy's own `http.send`, on the
replay's own thread and loop: there the model's round trip gets the evaluation's full deadline, not
the inline budget (about a millisecond, host calls included) that the serving loop's work is held
to. On the real evaluator (wasmtime, a module built by the real `opa` from the product's library).

The model here is a `ReAsk` that takes a round trip's time and honours its timeout as the NATS
client does; the replay against the real workers and the Groq emulator is `test_impact.py`."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH as H
from bridge.opabundle.keys import generate_keypair
from bridge.opawasm import HostConfig, WasmEvaluator
from controlplane.impact.replay import Oracle, ReplayPipeline
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord
from tests.test_evaluate_batched import build
from tests.wasm_helpers import signed_bundle

JUDGE = uuid.UUID(int=7)
SOURCE = """package judge

import data.groqpolicy.lib.decision as doc
import data.groqpolicy.lib.groq

answer := groq.judge_for("judge", "fast", "Is this text harmful?", {"text": input.text})

d contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "deny"
}

r contains groq.doubt(answer, 0.7) if not groq.confident(answer, 0.7)

a contains groq.summary(answer) if {
	groq.confident(answer, 0.7)
	answer.decision == "allow"
}

decision := doc.document("ethics", d, r, a, answer.confidence, ["P7-safety-harm-avoidance"])
"""
BRIDGE = "http://127.0.0.1:8016"  # the library's default bridge URL (no deployment overlay here)
# well beyond the inline budget, and 25 of them (a batched call's chunk) beyond a pure computation's
# 1 s deadline for the whole call, which the replay's batched call of a policy that asks a model once had
ROUND_TRIP_S = 0.06


class RoundTrip:
    """A model that answers `allow` after a round trip, or times out as the NATS client does."""

    name = "online"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        self.calls += 1
        if timeout < ROUND_TRIP_S:
            time.sleep(max(timeout, 0))
            return 504, {"error": {"message": f"no reply within {timeout:.3f}s"}}
        time.sleep(ROUND_TRIP_S)
        return 200, {"decision": "allow", "confidence": 0.9, "rationale": f"fine: {body['context']['text']}"}

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        raise AssertionError("the judge asks through http.send, not the model stage")


@pytest.fixture(scope="module")
def bundle(opa_bin) -> tuple[bytes, Any]:
    key = generate_keypair("RS256", "replay-test")
    return signed_bundle(build({JUDGE: SOURCE}), key), key


def evaluator_with(bundle: tuple[bytes, Any], oracle: Oracle, memo: bool = False) -> WasmEvaluator:
    """`memo`: with the oracle's memo, as the impact service's evaluator (it is read at load)."""
    archive, key = bundle
    ev = WasmEvaluator({key.kid: key.verification_key()}, keyid=key.kid, pool_size=4,
                       host=HostConfig(bridge_url=BRIDGE, infer_transport=oracle.transport,
                                       send_memo=oracle.memo if memo else None))
    ev.load(archive)
    return ev


def record() -> PolicyRecord:
    return PolicyRecord(rule_id=JUDGE, name="judge", policy_type="ethical_constraints", opa_policy=SOURCE,
                        performance_tier="nano", created_at="2026-12-02T00:00:00Z")


@pytest.mark.parametrize("n", [1, 40])  # one context, and a batch past the two-thread split
async def test_a_judgment_asked_anew_gets_the_round_trip_it_needs(bundle, n):
    oracle = Oracle({}, RoundTrip())
    ev = evaluator_with(bundle, oracle)
    pipeline = ReplayPipeline(ev, lambda: [record()], ask_model=oracle.ask)
    try:
        assert not pipeline.select([], "nano").blocking  # batched, as a replay runs every policy
        contexts = [{"principal": f"svc-{i}", "text": f"note {i}"} for i in range(n)]
        responses = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H,
                                               explain=False)
        assert [[p.decision for p in r.policy_results] for r in responses] == [["allow"]] * n  # the model's
        assert (len(oracle.asked), oracle.failed) == (n, 0)  # each distinct question asked once, none failed
        assert pipeline.scheduler.overruns == 0
    finally:
        await pipeline.stop()
        ev.close()


async def test_held_to_the_inline_budget_the_same_replay_would_fail_every_judgment(bundle):
    """What the replay's pipeline is spared: the serving loop's inline budget cuts the round trip to
    about a millisecond, the model times out and the policy fails closed."""
    oracle = Oracle({}, RoundTrip())
    ev = evaluator_with(bundle, oracle)
    pipeline = ReplayPipeline(ev, lambda: [record()], ask_model=oracle.ask)
    pipeline.scheduler.budget = True
    try:
        (response,) = await pipeline.decide_many([{"principal": "svc", "text": "note"}], policy_types=[], tier="nano",
                                                 constitutional_hash=H, explain=False)
        assert [p.decision for p in response.policy_results] in (["review"], ["deny"])  # failed, closed
        assert oracle.failed >= 1 and not oracle.asked
    finally:
        await pipeline.stop()
        ev.close()


def test_the_judge_is_a_policy_that_may_block():
    """Live, this policy would go to the blocking lane: only the replay batches it."""
    assert rego.may_block(SOURCE)
