"""Batched evaluation (one call into the WASM module for many contexts) decides exactly what
evaluating each context alone decides — on a module built by the real `opa` from the product's
constitution and two stored-policy modules, one of which fails at run time for some inputs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from types import SimpleNamespace

import msgspec
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH as H
from bridge.opabundle.keys import generate_keypair
from bridge.opawasm import WasmEvaluator
from controlplane.evaluation import constitution as cn
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.scheduling import CHUNK, Scheduler, run_batched
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord
from tests.conftest import REPO_ROOT
from tests.wasm_helpers import build_wasm_bundle, signed_bundle

LIMIT = uuid.UUID(int=1)
PICKY = uuid.UUID(int=2)
UNSURE = uuid.UUID(int=3)
HEAD = "package mine\n\nimport data.groqpolicy.lib.decision as doc\n\n"
SOURCES = {
    LIMIT: HEAD + 'd contains "amount above 100" if input.amount > 100\n\n'
                  'r contains "amount above 50" if input.amount > 50\n\n'
                  'decision := doc.document("limit", d, r, {"amount within limit"}, 1, ["P10-proportional-risk"])\n',
    # two complete definitions that disagree when both apply: OPA's eval_conflict_error at run time
    PICKY: "package picky\n\ndecision := {\"decision\": \"allow\", \"confidence\": 1, \"reasons\": [\"a\"]} if input.a\n\n"
           "decision := {\"decision\": \"deny\", \"confidence\": 1, \"reasons\": [\"deny: b\"]} if input.b\n",
    # an allow too unsure for the constitution: post-validation makes it review
    UNSURE: "package unsure\n\nimport rego.v1\n\ndefault confidence := 1\n\nconfidence := 0.2 if input.unsure\n\n"
            "decision := {\"decision\": \"allow\", \"reasons\": [\"ok\"], \"confidence\": confidence}\n",
}


def build(sources: dict[uuid.UUID, str], flags: tuple[str, ...] = ()) -> bytes:
    """A bundle like the control plane's: the stored policies, the library and the constitution."""
    modules = {f"p{i}.rego": rego.bundle_module(rid, text, title=str(rid), policy_type="risk_management", tier="nano")
               for i, (rid, text) in enumerate(sources.items())}
    lib = {p.name: p.read_text() for p in (REPO_ROOT / "rego" / "lib").glob("*.rego") if not p.name.endswith("_test.rego")}
    files = {**modules, **lib, "constitution.rego": (REPO_ROOT / "rego/constitution/constitution.rego").read_text()}
    data = {"groqpolicy": {"constitution": json.loads((REPO_ROOT / "rego/groqpolicy/constitution/data.json").read_text())}}
    entrypoints = [cn.PRE, cn.PRE_MANY, cn.POST, cn.POST_MANY]
    for rid in sources:
        entrypoints += [rego.wasm_entrypoint(rid), rego.wasm_batch_entrypoint(rid)]
    return build_wasm_bundle(files, entrypoints, data, flags)


def loaded(bundle: bytes, pool_size: int = 4) -> WasmEvaluator:
    """The product's evaluator, with `bundle` signed and loaded."""
    key = generate_keypair("RS256", "batch-test")
    ev = WasmEvaluator({key.kid: key.verification_key()}, keyid=key.kid, pool_size=pool_size)
    ev.load(signed_bundle(bundle, key))
    return ev


@pytest.fixture(scope="module")
def evaluator(opa_bin):
    ev = loaded(build(SOURCES, ("--revision", "r1")))
    yield ev
    ev.close()


def record(rid: uuid.UUID, priority: int = 0) -> PolicyRecord:
    return PolicyRecord(rule_id=rid, name=f"p{rid.int}", policy_type="risk_management", opa_policy=SOURCES[rid],
                        performance_tier="nano", priority=priority, created_at="2026-11-27T00:00:00Z")


def comparable(response) -> dict:
    out = msgspec.to_builtins(response)
    out.pop("evaluation_id")
    out.pop("performance_metrics")
    for r in out["policy_results"]:
        r.pop("wasm_execution_time_us")
    return out


CONTEXTS = [
    {"principal": "alice", "amount": 5},
    {"principal": "alice", "amount": 75},  # review
    {"principal": "alice", "amount": 500},  # deny
    {"amount": 5},  # no principal: pre-validation denies, no policy runs
    {"principal": "bob", "amount": 5, "oversight": {"disabled": True}},  # asks to switch oversight off: pre denies
    {"principal": {"id": "carol"}, "amount": 5, "oversight": {"escalation": "queue"}},
]


@pytest.mark.parametrize("n", [6, 40])  # below and above the two-thread split
async def test_a_replay_keeps_of_each_decision_what_the_pipeline_answers(evaluator, n):
    """A replay finishes the same stages without building responses (`ReplayPipeline.outcomes`):
    each context's decision, its policies' decisions by type and its WASM time are the response's."""
    from controlplane.impact.records import strictest_by_type
    from controlplane.impact.replay import ReplayPipeline

    pipeline = ReplayPipeline(evaluator, lambda: [record(LIMIT), record(PICKY, priority=1), record(UNSURE)])
    picky = [{}, {"a": True}, {"b": True}, {"a": True, "b": True}]  # undefined (deny), allow, deny, an error (deny)
    contexts = [dict(CONTEXTS[i % len(CONTEXTS)], n=i, **picky[i % len(picky)]) for i in range(n - 2)] + [
        {"principal": "dave", "amount": 5, "a": True},  # allowed by all three
        {"principal": "erin", "amount": 5, "a": True, "unsure": True}]  # all allow; post-validation: review
    try:
        responses = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
        outcomes = await pipeline.outcomes(contexts, policy_types=[], tier="nano", constitutional_hash=H)
    finally:
        await pipeline.stop()
    assert [o.decision for o in outcomes] == [r.decision for r in responses]
    assert {r.decision for r in responses} == {"allow", "review", "deny"}
    assert [o.by_type for o in outcomes] == [
        strictest_by_type([(p.policy_type, p.decision) for p in r.policy_results]) for r in responses]
    assert {} in [o.by_type for o in outcomes]  # pre-validation refused some: no policy ran for them
    assert any(r.decision == "review" and r.constitutional_compliance.post_validation == "review"
               and {p.decision for p in r.policy_results} == {"allow"} for r in responses)
    assert all(o.wasm_us > 0 for o in outcomes)


@pytest.mark.parametrize("n", [6, 15, 40])  # below and above the two-thread split
async def test_a_batch_decides_each_context_as_it_would_alone(evaluator, n):
    pipeline = Pipeline(evaluator, lambda: [record(LIMIT)])
    contexts = [dict(CONTEXTS[i % len(CONTEXTS)], n=i) for i in range(n)]
    many = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=True)
    alone = [await pipeline.decide(c, policy_types=[], tier="nano", constitutional_hash=H, explain=True) for c in contexts]
    assert [comparable(r) for r in many] == [comparable(r) for r in alone]
    assert [r.decision for r in many[:6]] == ["allow", "review", "deny", "deny", "deny", "allow"]
    assert many[3].constitutional_compliance.pre_validation == "deny" and many[3].policy_results == []
    assert len({r.evaluation_id for r in many}) == n
    assert {r.bundle_revision for r in many} == {"r1"}


async def test_a_context_that_fails_fails_alone(evaluator):
    """The batched call fails as a whole; the pipeline redoes it one context at a time, so only the
    context whose evaluation errs is denied for it."""
    pipeline = Pipeline(evaluator, lambda: [record(PICKY, priority=1), record(LIMIT)])
    contexts = [{"principal": "p", "amount": 1, "a": True, "n": i} for i in range(20)]
    contexts[7] = {"principal": "p", "amount": 1, "a": True, "b": True}
    many = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert [r.decision for r in many] == ["allow"] * 7 + ["deny"] + ["allow"] * 12
    picky = many[7].policy_results[0]
    assert picky.rule_id == PICKY and picky.decision == "deny" and "conflict" in picky.error.lower()
    assert many[7].reasons[0].startswith("deny: policy 'p2' could not be evaluated: ")
    assert [p.decision for p in many[8].policy_results] == ["allow", "allow"]


async def test_an_entrypoint_the_module_lacks_falls_back_to_single_calls(evaluator):
    """A revision built before batched entrypoints existed still evaluates (one call per context)."""
    values, errors = run_batched(evaluator, rego.wasm_entrypoint(LIMIT), "groqpolicy/rules/absent", CONTEXTS[:3], wrapped=True)
    assert errors == ["", "", ""] and [v["decision"] for v in values] == ["allow", "review", "deny"]


async def test_with_every_evaluation_thread_busy_a_batch_that_fits_inline_is_decided_on_the_loop(evaluator):
    """The loop's thread takes every chunk of a batch itself when no evaluation thread is free (the
    pool keeps one instance more than threads for it), instead of waiting for one."""
    pipeline = Pipeline(evaluator, lambda: [record(LIMIT)], cpu_threads=2)
    lane = pipeline.scheduler.compute
    gate = threading.Event()
    held = [asyncio.create_task(lane.offload(gate.wait, 10)) for _ in range(lane.threads)]
    await asyncio.sleep(0.1)
    assert lane.threads == 2 and lane.admitted == 2  # pool of 4: 2 compute, 1 blocking, 1 for the loop
    contexts = [dict(CONTEXTS[0], n=i) for i in range(40)]
    try:
        many = await asyncio.wait_for(pipeline.decide_many(contexts, policy_types=[], tier="nano",
                                                           constitutional_hash=H, explain=False), 5)
        assert [r.decision for r in many] == ["allow"] * 40
        assert not any(t.done() for t in held)  # decided while every thread was still busy
    finally:
        gate.set()
        await asyncio.gather(*held)
        pipeline.scheduler.close()


async def test_a_revision_loaded_during_a_call_does_not_decide_any_of_it(opa_bin):
    """The call pins the revision current at its start: a hot swap while it runs (here: right after
    it started) leaves every context decided, and reported, by that revision; the next call uses
    the new one, and the old one is closed once the call ends."""
    key = generate_keypair("RS256", "pin-test")
    stricter = {LIMIT: SOURCES[LIMIT].replace("input.amount > 100", "input.amount > 1")}
    first = signed_bundle(build({LIMIT: SOURCES[LIMIT]}, ("--revision", "rev-A")), key)
    second = signed_bundle(build(stricter, ("--revision", "rev-B")), key)
    ev = WasmEvaluator({key.kid: key.verification_key()}, keyid=key.kid, pool_size=4)
    old = ev.load(first)
    swaps = [second]

    def policies() -> list[PolicyRecord]:
        if swaps:
            ev.load(swaps.pop())  # the swap lands while the call below is under way
        return [record(LIMIT)]

    pipeline = Pipeline(ev, policies)
    contexts = [dict(CONTEXTS[0], n=i) for i in range(40)]  # amount 5: allowed by A, denied by B
    during = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert {(r.decision, r.bundle_revision) for r in during} == {("allow", "rev-A")}
    assert old.pool.closed and ev.revision == "rev-B"
    after = await pipeline.decide_many(contexts[:1], policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert (after[0].decision, after[0].bundle_revision) == ("deny", "rev-B")


class Counting:
    """The evaluator, counting the inputs pre-validation is asked about, under a revision name the
    test sets (as a hot swap would change it)."""

    def __init__(self, inner) -> None:
        self.inner, self.pre_inputs = inner, []
        self.pool_size = inner.pool_size
        self.revision = "r1"

    @contextlib.contextmanager
    def pinned(self):
        yield self

    def evaluate(self, entrypoint, input=None, **kw):
        if entrypoint in (cn.PRE, cn.PRE_MANY):
            self.pre_inputs.extend(input if entrypoint == cn.PRE_MANY else [input])
        return self.inner.evaluate(entrypoint, input, **kw)


async def test_pre_validation_is_asked_once_per_distinct_request_identity_and_revision(evaluator):
    """Pre-validation sees only `pre_input` (principal, oversight, audit, options and the call's hash)
    and its answers are memoised per revision: a batch of one principal's requests costs one
    evaluation, a request that differs in those fields gets its own, a new revision asks again."""
    counting = Counting(evaluator)
    pipeline = Pipeline(counting, lambda: [record(LIMIT)])
    contexts = [{"principal": "dora", "amount": i, "constitutional_hash": "ignored"} for i in range(12)]
    contexts[5] = {"principal": "dora", "amount": 5, "oversight": {"disabled": True}}
    first = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert counting.pre_inputs == [{"principal": "dora", "constitutional_hash": H},
                                   {"principal": "dora", "oversight": {"disabled": True}, "constitutional_hash": H}]
    assert [r.decision for r in first] == ["allow"] * 5 + ["deny"] + ["allow"] * 6
    assert first[5].constitutional_compliance.violations[0].message == "request asks to disable human oversight"
    again = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert len(counting.pre_inputs) == 2 and [comparable(r) for r in again] == [comparable(r) for r in first]
    wrong = await pipeline.decide(contexts[0], policy_types=[], tier="nano", constitutional_hash="0" * 16, explain=False)
    assert wrong.decision == "deny" and counting.pre_inputs[-1] == {"principal": "dora", "constitutional_hash": "0" * 16}
    counting.revision = "r2"
    await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert len(counting.pre_inputs) == 5


NAMED = ["dora", "erin", {"id": "svc-7"}, {"id": "svc-8", "team": "payments"}, "\u00e9mile"]
UNNAMED = ["", {"id": ""}, {"name": "no id"}, 7, None, ["dora"], {"id": 7}]


async def test_pre_validation_is_asked_once_per_named_or_unnamed_principal_and_answers_as_each_alone(evaluator):
    """Pre-validation asks of the principal only whether it is named (`constitution.named`), so many
    principals' requests share one evaluation per answer; each shared answer is the one the
    pre-validation entrypoint gives that request alone."""
    counting = Counting(evaluator)
    pipeline = Pipeline(counting, lambda: [record(LIMIT)])
    contexts = [{"principal": p, "amount": 5} for p in NAMED + UNNAMED] + [{"amount": 5}]
    contexts += [{"principal": f"user-{i}", "amount": 5} for i in range(100)]
    responses = await pipeline.decide_many(contexts, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert len(counting.pre_inputs) == 2  # named, and not: not one per principal
    for ctx, response in zip(contexts, responses, strict=True):
        alone = evaluator.evaluate(cn.PRE, cn.pre_input(ctx, H))
        assert [v.message for v in response.constitutional_compliance.violations] == \
            [v["message"] for v in alone["violations"]]
        named = cn.named(ctx.get("principal"))
        assert response.decision == ("allow" if named else "deny") == alone["decision"]


async def test_the_applicable_policies_are_worked_out_again_when_the_stored_set_changes(evaluator):
    """The pipeline keeps its choice of policies per list the provider hands out (the store hands
    out the same list until a write or a watch update): a new list is a new choice."""
    current = [record(LIMIT)]
    pipeline = Pipeline(evaluator, lambda: current)
    ctx = {"principal": "erin", "amount": 5}
    first = await pipeline.decide(ctx, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    again = await pipeline.decide(ctx, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert first.applicable_policies == again.applicable_policies == [LIMIT] and first.decision == "allow"
    assert pipeline.select([], "nano") is pipeline.select([], "nano")
    current = [msgspec.structs.replace(record(LIMIT), is_active=False)]
    gone = await pipeline.decide(ctx, policy_types=[], tier="nano", constitutional_hash=H, explain=False)
    assert gone.applicable_policies == [] and gone.decision == "deny"
    assert gone.reasons == ["deny: no active policy applies (any type, tier nano or faster)"]


async def test_a_batch_whose_caller_stopped_waiting_takes_no_more_chunks():
    """A cancelled batch (a chunk whose origin gave up on it, a client gone) leaves the evaluation
    thread once its current chunk is done: before, the helper thread took every chunk left, holding
    a compute thread for work nobody would read."""
    scheduler = Scheduler(4, cpu_threads=2)
    started: list[int] = []

    def work(start: int, stop: int, revision: object) -> int:
        started.append(start)
        time.sleep(0.02)
        return start

    try:
        task = asyncio.ensure_future(scheduler.chunked(work, SimpleNamespace(revision="r1"), CHUNK * 60))
        while len(started) < 6:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = len(started)
        await asyncio.sleep(0.3)  # long enough for the helper to have taken ~15 more chunks
        assert len(started) <= seen + 1  # at most the chunk the helper held when the batch was cancelled
    finally:
        scheduler.close()
