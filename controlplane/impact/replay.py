"""Replay: recorded decisions decided again by a candidate, and what changed.

The recorded inputs go through the evaluation pipeline's own stages (`ReplayPipeline.outcomes`:
`decide_many`'s stages 2 to 5, batched, on the candidate's own evaluator), so a replayed decision is
made exactly as a live one would be; only the response a caller would get is not built.
Every model call the candidate makes goes to the `Oracle`: a request recorded in the replay store
(same tier, model, question, context, asking policy: `records.judgment_key`) is answered from the
recording and never asked again; any other is asked anew through `ReAsk`, once per request.

`ReAsk` is the seam for how new judgments are asked: `OnlineReAsk` sends them to the live
inference workers now; `controlplane.impact.batched.BatchReAsk` collects them for GroqCloud's
Batch API at its batch price and answers them on the replay's next pass.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import msgspec

from bridge.kernel.errors import GroqPolicyError
from bridge.opawasm import UNDEFINED, SendMemo, WasmEvaluator
from controlplane.audit.ingest import decision_of
from controlplane.evaluation.decision import verdict
from controlplane.evaluation.interfaces import Revision
from controlplane.evaluation.model_stage import BLOCKING_TIMEOUT_S
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.staging import Call, Staged
from controlplane.impact.candidate import Candidate
from controlplane.impact.records import Judgment, Recorded, judgment_key, redact, strictest_by_type
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord

CHUNK = 1024  # contexts per pipeline call
EXAMPLES_PER_CELL = 3
PENDING_WAIT_S = 60.0  # the longest a decision waits for the same judgment another decision is asking
NONE = "none"  # a policy type that had no part in the decision before (or after)


class ReAsk(Protocol):
    """How a judgment that is not recorded is asked anew."""

    name: str

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]: ...  # from worker threads

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]: ...  # on the loop


class OnlineReAsk:
    """New judgments from the live inference workers, now (the control plane's model client)."""

    name = "online"

    def __init__(self, call: Callable[[str, Any, float], tuple[int, Any]],
                 request: Callable[[str, bytes], Any]) -> None:
        self._call, self._request = call, request

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        return self._call(tier, body, timeout)

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        result: tuple[int, bytes, int] = await self._request(tier, body)
        return result


class Oracle:
    """The candidate's model: recorded judgments first, then `reask` (counted and costed).

    A judgment asked anew is asked once however many decisions want it: the first asker registers
    it as in flight, and every other decision that wants the same request meanwhile (on another
    evaluation thread, or another task of the model stage's `gather`) waits for that answer instead
    of asking too. Both paths share one future per request, so a policy's `http.send` and the
    pipeline's own model stage never ask the same question twice either."""

    def __init__(self, judgments: dict[str, Judgment], reask: ReAsk | None) -> None:
        self.replies: dict[str, Any] = {k: j.reply for k, j in judgments.items()}
        self.reask = reask
        # the candidate's evaluator answers `http.send` from this memo once it has seen a request
        # answered (`HostConfig.send_memo`): the same answer as `transport`, without its cost
        self.memo = SendMemo()
        self._recorded = 0  # calls answered from the recording by `transport` and `ask`
        self.asked: set[str] = set()  # distinct requests asked anew
        self.joined = 0  # calls that waited for the same request asked anew by another decision
        self.failed = 0
        self.cost_usd = 0.0
        self.asked_ms: list[float] = []
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[tuple[int, Any, int]]] = {}  # key -> (status, reply, max_age)

    @property
    def recorded(self) -> int:
        """Calls answered from what the replay already knows: the recording, or an answer asked
        anew by an earlier call (the memo's hits are such calls, answered in the evaluator)."""
        return self._recorded + self.memo.hits

    def _hit(self, key: str) -> Any:
        reply = self.replies.get(key)
        if reply is not None:
            with self._lock:
                self._recorded += 1
        return reply

    def _claim(self, key: str) -> tuple[Future[tuple[int, Any, int]], bool]:
        """The future of `key`'s answer, and whether the caller is the one to ask."""
        with self._lock:
            found = self._inflight.get(key)
            if found is not None:
                self.joined += 1
                return found, False
            mine: Future[tuple[int, Any, int]] = Future()
            self._inflight[key] = mine
            return mine, True

    def _asked(self, key: str, status: int, reply: Any, started: float) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            self.asked_ms.append((time.perf_counter() - started) * 1000)
            if status != 200 or not isinstance(reply, dict):
                self.failed += 1
                return
            if key not in self.asked:
                self.asked.add(key)
                usage = reply.get("usage") or {}
                self.cost_usd += float(usage.get("cost_usd") or 0.0)
            self.replies[key] = reply

    def transport(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        key = judgment_key(tier, body)
        reply = self._hit(key)
        if reply is not None:
            return 200, reply
        if self.reask is None:
            return 503, {"error": {"message": "not recorded, and this replay asks no model"}}
        future, mine = self._claim(key)
        if not mine:
            try:
                status, reply, _ = future.result(timeout)
            except GroqPolicyError as exc:
                return exc.status, {"error": {"message": exc.message}}
            except FutureTimeout:
                return 504, {"error": {"message": "the same judgment, asked by another decision, is still pending"}}
            return status, reply
        started = time.perf_counter()
        try:
            status, reply = self.reask.call(tier, body, timeout)
        except BaseException as exc:
            self._asked(key, 0, None, started)
            future.set_exception(exc)
            raise
        self._asked(key, status, reply, started)
        future.set_result((status, reply, 0))
        return status, reply

    async def ask(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        key = judgment_key(tier, body)
        reply = self._hit(key)
        if reply is not None:
            return 200, msgspec.json.encode(reply), 0
        if self.reask is None:
            return 503, b'{"error": {"message": "not recorded, and this replay asks no model"}}', 0
        future, mine = self._claim(key)
        if not mine:  # an exception the asker met is raised here too, as if this call had met it
            try:
                status, reply, max_age = await asyncio.wait_for(asyncio.wrap_future(future), PENDING_WAIT_S)
            except TimeoutError:
                return 504, b'{"error": {"message": "the same judgment, asked by another decision, is still pending"}}', 0
            return status, msgspec.json.encode(reply), max_age
        started = time.perf_counter()
        try:
            status, data, max_age = await self.reask.request(tier, body)
            decoded = msgspec.json.decode(data) if status == 200 else _error_body(data)
        except msgspec.DecodeError:
            # an unreadable answer is no answer: the waiters get the same failure, never a hang
            status, data, max_age = 502, b'{"error": {"message": "the model\'s reply is not JSON"}}', 0
            decoded = _error_body(data)
        except BaseException as exc:
            self._asked(key, getattr(exc, "status", 0), None, started)
            future.set_exception(exc)
            raise
        self._asked(key, status, decoded if status == 200 else None, started)
        future.set_result((status, decoded, max_age))
        return status, data, max_age


def _error_body(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return {"error": {"message": data[:200].decode(errors="replace")}}


class ReplayPipeline(Pipeline):
    """The evaluation pipeline as a replay runs it: every policy batched, also those that call a
    model through `http.send`. Live, such a policy gets a worker thread per evaluation so that a
    model round trip does not hold the others up; in a replay the `Oracle` answers recorded
    judgments from memory, so the thread hop would cost more than the evaluation (about 8x on the
    replay benchmark). A judgment asked anew blocks its chunk for its round trip, on the replay's
    own thread and loop (`ImpactService.execute`), never the serving loop's: so that loop's work is
    not held to the inline budget either (about a millisecond, host calls included, which would cut
    every model round trip short and fail it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheduler.budget = False

    def _may_block(self, record: PolicyRecord) -> bool:
        return False

    def _per_input(self, record: PolicyRecord) -> float | None:
        # a policy that may ask a model gets, per input of its batched call, the deadline it has live
        # on its own thread: a judgment asked anew is a round trip each (0.2-2 s at GroqCloud), and a
        # pure computation's deadline for the whole call (1 s) would fail the chunk's inputs
        return BLOCKING_TIMEOUT_S if super()._may_block(record) else None

    async def outcomes(self, contexts: list[Any], *, policy_types: list[str], tier: str,
                       constitutional_hash: str) -> list[Outcome]:
        """What the replay keeps of each decision (`decide_many`'s, through the same stages), without
        the response a caller would get: no evaluation ids, reasons, violations or timings to build."""
        return await self._stages(contexts, policy_types, tier, constitutional_hash, False, False, self._outcomes, [])

    def _outcomes(self, call: Call, start: int, staged: list[Staged], evaluator: Revision) -> list[Outcome]:
        proposals, posts, costs = self._synthesise(call, start, staged, evaluator)
        return [Outcome(verdict(p, post), strictest_by_type([(r.policy_type, r.decision) for r in p.results]),
                        round(p.wasm_us + cost, 2)) for p, post, cost in zip(proposals, posts, costs, strict=True)]


class Outcome(msgspec.Struct, gc=False):
    decision: str
    by_type: dict[str, str]
    wasm_us: float


async def decide_all(candidate: Candidate, evaluator: WasmEvaluator, oracle: Oracle, decisions: list[Recorded],
                     progress: Callable[[int], Any] | None = None) -> list[Outcome]:
    """Each recorded decision made again by the candidate (in the order given)."""
    pipeline = ReplayPipeline(evaluator, lambda: candidate.records, ask_model=oracle.ask)
    out: list[Outcome | None] = [None] * len(decisions)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, d in enumerate(decisions):
        groups.setdefault(("agent", d.path) if d.source == "opa-agent" else
                          (tuple(d.policy_types), d.tier, d.constitutional_hash), []).append(i)
    done = 0
    try:
        for key, indexes in groups.items():
            for at in range(0, len(indexes), CHUNK):
                part = indexes[at:at + CHUNK]
                if key[0] == "agent":
                    found = await _agent(candidate, evaluator, key[1], [decisions[i].input for i in part])
                else:
                    types, tier, chash = key
                    found = await pipeline.outcomes([decisions[i].input for i in part], policy_types=list(types),
                                                    tier=tier, constitutional_hash=chash)
                for i, o in zip(part, found, strict=True):
                    out[i] = o
                done += len(part)
                if progress is not None:
                    await progress(done)
    finally:
        await pipeline.stop()
    return [o for o in out if o is not None]


async def _agent(candidate: Candidate, evaluator: WasmEvaluator, path: str, inputs: list[Any]) -> list[Outcome]:
    """An agent's query of one policy's decision, on the candidate's entrypoint for that policy."""
    kinds = {rego.decision_path(r.rule_id): (r.rule_id, r.policy_type) for r in candidate.records}
    found = kinds.get(path)
    if found is None:  # a path the candidate does not serve (the policy is gone): undefined
        return [Outcome("undefined", {}, 0.0) for _ in inputs]
    rule_id, kind = found
    out = []
    for value in inputs:
        t0 = time.perf_counter_ns()
        try:
            result = await asyncio.to_thread(evaluator.evaluate, rego.wasm_entrypoint(rule_id), value, timeout=5.0)
            decision = decision_of(result, result is not UNDEFINED)[0]
        except GroqPolicyError:  # fail closed, as the agent's own evaluation would
            decision = "deny"
        out.append(Outcome(decision, {kind: decision}, (time.perf_counter_ns() - t0) / 1000))
    return out


# ---- the report ---------------------------------------------------------------------------------
class Example(msgspec.Struct):
    policy_type: str
    before: str
    after: str
    count: int
    inputs: list[Any]  # redacted


class ModelCalls(msgspec.Struct):
    recorded: int  # answered from the recording
    new: int  # distinct requests asked anew
    failed: int
    cost_usd: float  # of the new calls, at the tier catalog's prices
    via: str  # online | batch
    batches: list[str] = []  # via batch: the Batch API jobs submitted, in order


class Latency(msgspec.Struct):
    recorded_wasm_us_p50: float  # the live revision's in-process time per decision, as recorded
    candidate_wasm_us_p50: float  # the candidate's, replayed
    change_us: float
    new_call_ms_p50: float  # the model calls asked anew (0 when none; via batch: the jobs' wall time)


class Report(msgspec.Struct, kw_only=True):
    id: str
    candidate: str
    candidate_revision: str
    live_revisions: list[str]
    decisions: int
    changed: int
    matrix: dict[str, dict[str, dict[str, int]]]  # policy type ("*": the whole decision) -> before -> after -> n
    examples: list[Example]
    model_calls: ModelCalls
    latency: Latency
    elapsed_s: float
    decisions_per_s: float
    created_at: float


def _p50(values: Iterable[float]) -> float:
    found = list(values)
    return round(statistics.median(found), 2) if found else 0.0


def report(candidate: Candidate, decisions: list[Recorded], outcomes: list[Outcome], oracle: Oracle, *,
           redact_fields: Iterable[str], started: float, via: str) -> Report:
    """The report; its rate counts the replay from `started` (perf_counter) to the report, included."""
    fields = frozenset(redact_fields)
    counts: dict[tuple[str, str, str], int] = {}
    examples: dict[tuple[str, str, str], Example] = {}
    changed = 0
    for d, o in zip(decisions, outcomes, strict=True):
        before_types, after_types = d.by_type, o.by_type
        kinds = before_types.keys() if before_types.keys() == after_types.keys() else before_types.keys() | after_types.keys()
        cells = [("*", d.decision, o.decision)] + [(k, before_types.get(k, NONE), after_types.get(k, NONE)) for k in kinds]
        changed += d.decision != o.decision
        for cell in cells:
            counts[cell] = counts.get(cell, 0) + 1
            if cell[1] != cell[2]:
                ex = examples.get(cell)
                if ex is None:
                    ex = examples[cell] = Example(*cell, count=0, inputs=[])
                ex.count += 1
                if len(ex.inputs) < EXAMPLES_PER_CELL:
                    ex.inputs.append(redact(d.input, fields))
    matrix: dict[str, dict[str, dict[str, int]]] = {}
    for (kind, before, after), n in sorted(counts.items()):
        matrix.setdefault(kind, {}).setdefault(before, {})[after] = n
    latency = Latency(recorded_wasm_us_p50=_p50(d.wasm_us for d in decisions),
                      candidate_wasm_us_p50=_p50(o.wasm_us for o in outcomes), change_us=0.0,
                      new_call_ms_p50=_p50(oracle.asked_ms))
    latency.change_us = round(latency.candidate_wasm_us_p50 - latency.recorded_wasm_us_p50, 2)
    elapsed_s = time.perf_counter() - started
    return Report(
        id=str(uuid.uuid4()), candidate=candidate.description, candidate_revision=candidate.revision,
        live_revisions=sorted({d.revision for d in decisions if d.revision}), decisions=len(decisions),
        changed=changed, matrix=matrix, examples=sorted(examples.values(), key=lambda e: (e.policy_type, -e.count)),
        model_calls=ModelCalls(recorded=oracle.recorded, new=len(oracle.asked), failed=oracle.failed,
                               cost_usd=round(oracle.cost_usd, 9), via=via),
        latency=latency, elapsed_s=round(elapsed_s, 4),
        decisions_per_s=round(len(decisions) / elapsed_s, 1) if elapsed_s > 0 else 0.0, created_at=time.time(),
    )
