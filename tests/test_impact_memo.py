"""A replay's `http.send` memo (`HostConfig.send_memo`): a request answered once is answered again by
its own text, inside the evaluator, with exactly the answer the transport gave, and a changed
request misses it. On the real evaluator (wasmtime), modules built by the real `opa` from the
product's `lib.groq`; the transport is the replay's own `Oracle` over recorded judgments."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH as H
from bridge.opawasm import HostConfig, SendMemo, WasmEvaluator, policy_from_files
from controlplane.impact.records import Judgment, judgment_key
from controlplane.impact.replay import EVALUATION_CHUNK, Oracle, ReplayPipeline
from tests.conftest import REPO_ROOT
from tests.test_replay_pipeline import BRIDGE, bundle, record  # noqa: F401 - `bundle` is a fixture
from tests.wasm_helpers import build_wasm_bundle, bundle_files

# the whole http.send response, and the policy's answer built on it, for one question about input.text
POLICY = """package memo

import data.groqpolicy.lib.groq

response := http.send(groq.request("memo", "fast", "Is this text harmful?", {"text": input.text, "tags": {t | some t in input.tags}}))

answer := groq.judge_for("memo", "fast", "Is this text harmful?", {"text": input.text, "tags": {t | some t in input.tags}})
"""


def _reply(text: str) -> dict[str, Any]:
    return {"decision": "deny" if "rm -rf" in text else "allow", "confidence": 0.875, "rationale": f"about {text!r}",
            "model": "recorded-model", "usage": {"cost_usd": 0.0001}}


def recorded(*texts: str, tags: tuple[str, ...] = ("a", "b")) -> dict[str, Judgment]:
    """Judgments as the replay store holds them: keyed by the request body `lib.groq` sends."""
    out = {}
    for text in texts:
        body = {"question": "Is this text harmful?", "context": {"text": text, "tags": sorted(tags)}, "policy": "memo",
                "constitutional_hash": H, "deadline_ms": 1500}
        key = judgment_key("fast", body)
        out[key] = Judgment(key=key, tier="fast", reply=_reply(text))
    return out


@pytest.fixture(scope="module")
def wasm(opa_bin) -> dict[str, bytes]:
    lib = (REPO_ROOT / "rego" / "lib" / "groq.rego").read_text()
    return bundle_files(build_wasm_bundle({"memo.rego": POLICY, "groq.rego": lib}, ["memo/response", "memo/answer"]))


def policy(wasm: dict[str, bytes], oracle: Oracle, memo: SendMemo | None) -> Any:
    return policy_from_files(wasm, host=HostConfig(bridge_url=BRIDGE, infer_transport=oracle.transport, send_memo=memo),
                             pool_size=2)


@pytest.mark.parametrize("entrypoint", ["memo/response", "memo/answer"])
def test_a_memo_hit_gives_exactly_the_answer_the_call_gave(wasm, entrypoint):
    texts = ("note 1: a friendly reminder", "note 2: please run rm -rf on it")
    live, memoised = Oracle(recorded(*texts), None), Oracle(recorded(*texts), None)
    without, with_memo = policy(wasm, live, None), policy(wasm, memoised, memoised.memo)
    try:
        for text in texts:
            inp = _json({"text": text, "tags": ["b", "a"]})
            answer = without.evaluate_raw(entrypoint, inp)
            found = msgspec.json.decode(answer)[0]["result"]
            assert found.get("status_code") == 200 or found.get("ok") is True  # answered from the recording
            hits = memoised.memo.hits
            assert with_memo.evaluate_raw(entrypoint, inp) == answer  # learnt: the call's own answer
            assert memoised.memo.hits == hits
            for _ in range(3):  # then from the memo: byte for byte the same
                assert with_memo.evaluate_raw(entrypoint, inp) == answer
            assert memoised.memo.hits == hits + 3
            # the same request built from a set in another order: the same answer
            assert with_memo.evaluate_raw(entrypoint, _json({"text": text, "tags": ["a", "b", "a"]})) == answer
        assert live.calls == 2 and memoised.calls == 2 * 5  # a memo hit counts as the recorded call it replaces
        assert live.recorded == memoised.recorded == 2  # two recorded judgments used, however often
        assert (memoised.failed, memoised.asked, live.failed) == (0, set(), 0)
    finally:
        without.close()
        with_memo.close()


def test_a_changed_request_misses_the_memo(wasm):
    judgments = recorded("note 1", "note 2", "note 3", tags=("a", "c"))
    oracle = Oracle(judgments, None)
    p = policy(wasm, oracle, oracle.memo)
    try:
        first = p.evaluate("memo/response", {"text": "note 1", "tags": ["a", "c"]})
        assert p.evaluate("memo/response", {"text": "note 1", "tags": ["a", "c"]}) == first and oracle.memo.hits == 1
        for changed in ({"text": "note 2", "tags": ["a", "c"]}, {"text": "note 3", "tags": ["c", "a"]}):
            found = p.evaluate("memo/response", changed)
            assert found["status_code"] == 200 and found["body"] == _reply(changed["text"])
        assert oracle.memo.hits == 1 and oracle.calls == 4 and oracle.recorded == 3  # each changed text went to the Oracle
        # a changed part of the request the recording does not cover (another tag): asked, not recorded
        missing = p.evaluate("memo/response", {"text": "note 1", "tags": ["a", "b"]})
        assert missing["status_code"] == 503 and oracle.memo.hits == 1
    finally:
        p.close()


def test_an_answer_other_than_200_is_never_kept(wasm):
    oracle = Oracle({}, None)  # nothing recorded, nothing asked: every call is a 503
    p = policy(wasm, oracle, oracle.memo)
    try:
        for _ in range(3):
            assert p.evaluate("memo/answer", {"text": "note 1", "tags": []})["ok"] is False
        assert oracle.memo.hits == 0 and oracle.calls == oracle.recorded == 0
    finally:
        p.close()


def test_a_200_whose_reply_is_not_an_object_is_never_kept(wasm):
    """The oracle counts such an answer as failed and asks again: the memo must not pin it."""
    asked: list[Any] = []

    def unreadable(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        asked.append(body)
        return 200, "not a reply"

    memo = SendMemo()
    p = policy_from_files(wasm, host=HostConfig(bridge_url=BRIDGE, infer_transport=unreadable, send_memo=memo),
                          pool_size=2)
    try:
        for _ in range(3):
            assert p.evaluate("memo/response", {"text": "note 1", "tags": []})["body"] == "not a reply"
        assert memo.hits == 0 and len(asked) == 3
    finally:
        p.close()


async def test_a_replay_decides_and_counts_the_same_with_the_memo(bundle):  # noqa: F811 - the fixture
    """The replay pipeline, batched over two threads, with and without the memo: the same
    decisions and the same counts of recorded calls (the memo's hits are such calls)."""
    # more than one evaluation call's worth (a replay evaluates 256 decisions a call): the memo answers across calls
    contexts = [{"principal": f"svc-{i}", "text": f"note {i % 5}" + (": rm -rf" if i % 7 == 0 else "")}
                for i in range(2 * EVALUATION_CHUNK + 60)]
    first = Oracle({}, _Answers())
    await _decide(bundle, first, contexts, memo=False)
    judgments = {k: Judgment(key=k, tier="fast", reply=v) for k, v in first.replies.items()}
    outcomes = {}
    for memo in (False, True):
        oracle = Oracle(judgments, None)
        outcomes[memo] = (await _decide(bundle, oracle, contexts, memo=memo), oracle.calls, oracle.failed,
                          len(oracle.asked))
        assert (oracle.memo.hits > 0) is memo
    assert outcomes[True] == outcomes[False]
    # one recorded call per distinct request and evaluation call (http.send keeps its answer within one)
    assert outcomes[True][1] >= len({c["text"] for c in contexts}) and outcomes[True][2:] == (0, 0)


class _Answers:
    """The model of the recording pass: an answer fixed by the text."""

    name = "online"

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        return 200, _reply(body["context"]["text"])

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        raise AssertionError("the judge asks through http.send, not the model stage")


async def _decide(bundle: Any, oracle: Oracle, contexts: list[dict[str, Any]], *, memo: bool) -> list[Any]:  # noqa: F811
    archive, key = bundle
    ev = WasmEvaluator({key.kid: key.verification_key()}, keyid=key.kid, pool_size=4,
                       host=HostConfig(bridge_url=BRIDGE, infer_transport=oracle.transport,
                                       send_memo=oracle.memo if memo else None))
    ev.load(archive)
    pipeline = ReplayPipeline(ev, lambda: [record()], ask_model=oracle.ask)
    try:
        responses = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H,
                                               explain=False)
        return [(r.decision, [(p.decision, p.confidence_score, p.opa_evaluation_result, p.error) for p in r.policy_results])
                for r in responses]
    finally:
        await pipeline.stop()
        ev.close()


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)
