"""What a full garbage collection of a serving control-plane process costs with a full decision-log
memory (10,000 events in the tail, 100,000 decision ids seen, from `SEEN_IDS` OPA-shaped events
uploaded as an agent sends them), and with full constitution memos (`MEMO_SIZE` pre- and
post-validation answers, as distinct principals and proposals fill them), against the same process
without either.

Why it matters: every request waits while a collection runs. The serving process freezes what is
alive at start (`gc.freeze`, controlplane.app), so a full collection walks only what was made
since; a memory that holds containers per event made that tens of milliseconds per collection, and
at 1,000 requests/s the full collections came every few seconds (benchmarks/README.md, "Collector
pauses"). `GROQPOLICY_BENCH_SHORT=1` fills the memory with a tenth of the events.
"""

from __future__ import annotations

import gc
import json
import os

import pytest

from benchmarks.agent_ingest import opa_event
from controlplane.agents.decision_logs import MEMORY_TAIL, SEEN_IDS, DecisionLogStore
from controlplane.agents.ingest import screen_batch
from controlplane.evaluation import decision
from controlplane.evaluation.constitution import MEMO_SIZE, Constitution, post_key, pre_key

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
EVENTS = SEEN_IDS // 10 if SHORT else SEEN_IDS
UPLOAD = 1000  # events per upload, as an agent's batches are sized by bytes


def _filled() -> DecisionLogStore:
    store = DecisionLogStore(None)  # memory only: the file is not what a collection walks
    for first in range(0, EVENTS, UPLOAD):
        events = [{**opa_event(i), "decision_id": f"{i:08x}-0000-4000-8000-000000000000"}
                  for i in range(first, min(first + UPLOAD, EVENTS))]
        accepted, _ = screen_batch(json.dumps(events).encode())
        store.append(store.triage(accepted))
    assert store.total == EVENTS and len(store.query(limit=MEMORY_TAIL + 1)) == min(EVENTS, MEMORY_TAIL)
    return store


@pytest.fixture(scope="module")
def frozen_start():
    gc.collect()
    gc.freeze()  # as the serving process after its start (controlplane.app)
    yield
    gc.unfreeze()


def test_full_collection_without_decision_logs(benchmark, frozen_start):
    benchmark.extra_info["tracked"] = len(gc.get_objects())
    benchmark.pedantic(gc.collect, rounds=30 if SHORT else 100, warmup_rounds=2)


def test_full_collection_with_a_full_decision_log_memory(benchmark, frozen_start):
    store = _filled()
    benchmark.extra_info["tracked"] = len(gc.get_objects())
    benchmark.pedantic(gc.collect, rounds=30 if SHORT else 100, warmup_rounds=2)
    del store


def _memos() -> Constitution:
    """Both memos full, filled as `Constitution._stage` fills them (a key, the document's outcome)."""
    memos = Constitution()
    pre_of = getattr(decision, "pre_outcome", None) or decision.PreOutcome  # before: the outcome was a class
    post_of = getattr(decision, "post_outcome", None) or decision.PostOutcome
    for i in range(MEMO_SIZE):
        ctx = {"principal": {"id": f"user-{i}", "roles": ["viewer"]}, "oversight": {"escalation": "team-a"}}
        memos._pre[pre_key("rev", "cdd01ef066bc6cf2", ctx)] = pre_of({
            "decision": "allow", "reasons": ["no constitutional violations"], "violations": [], "confidence": 1,
            "principles": ["P1-human-oversight", "P9-accountability-audit"], "policy": "constitution.pre_validation"})
        proposal = decision.Proposal("allow", 0.5, [f"ok {i}"], [], 0.0, 1.0, False)
        memos._post[post_key("rev", "cdd01ef066bc6cf2", proposal, ctx)] = post_of({
            "decision": "review", "reasons": ["review: allow with confidence 0.5 below 0.7 needs a human reviewer"],
            "violations": [{"principle": "P1-human-oversight", "severity": "review", "message": "low confidence"}],
            "confidence": 1})
    return memos


def test_full_collection_with_full_constitution_memos(benchmark, frozen_start):
    memos = _memos()
    gc.collect()  # the young collections a serving process runs meanwhile, which untrack what they can
    benchmark.extra_info["tracked"] = len(gc.get_objects())
    benchmark.pedantic(gc.collect, rounds=30 if SHORT else 100, warmup_rounds=2)
    del memos


def _l1_full():
    """An inference worker's in-process judgment cache, full (`l1_size` replies), as its engine
    fills it (encoded since the change; reply structs before)."""
    from bridge.inference.cache import TTLCache
    from bridge.inference.wire import InferReply, Usage
    from bridge.inference.worker import engine as worker
    from bridge.kernel.config import EngineSettings

    keep = getattr(worker, "_encode", lambda reply: reply)
    size = EngineSettings().l1_size // (10 if SHORT else 1)
    l1: TTLCache = TTLCache(size)
    for i in range(size):
        l1.set(f"{i:064x}", keep(InferReply(
            decision="allow", confidence=0.83, rationale=f"no risk markers found in request {i}", model="openai/gpt-oss-20b",
            tier="fast", usage=Usage(prompt_tokens=412, completion_tokens=37, total_tokens=449), reasons=["within policy"])), 600)
    return l1


def test_full_collection_with_a_full_inference_cache(benchmark, frozen_start):
    """In the inference worker's process (its judgment cache), not the control plane's."""
    l1 = _l1_full()
    gc.collect()
    benchmark.extra_info["tracked"] = len(gc.get_objects())
    benchmark.pedantic(gc.collect, rounds=30 if SHORT else 100, warmup_rounds=2)
    del l1
