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

A long replay shares its chunks of decisions with helper processes holding the same candidate and
recording (`controlplane.impact.helpers`); a chunk that needs a judgment a helper does not have is
decided here. What a replay found is turned into its report by `controlplane.impact.report`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
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
from controlplane.evaluation.scheduling import CHUNK as LIVE_CHUNK
from controlplane.evaluation.scheduling import INLINE_TIMEOUT_S, run_batched
from controlplane.evaluation.staging import Call, Staged
from controlplane.impact.candidate import Candidate
from controlplane.impact.records import Chunk, Judgment, Outcome, Recorded, judgment_key, strictest_by_type
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord

CHUNK = 1024  # contexts per pipeline call
# contexts per evaluation call (the live path's 25 hands the GIL between two threads, which buys a
# replay nothing): fewer calls, and a judgment recorded once is parsed into the guest once per call
EVALUATION_CHUNK = 256
PENDING_WAIT_S = 60.0  # the longest a decision waits for the same judgment another decision is asking


class ReAsk(Protocol):
    """How a judgment that is not recorded is asked anew."""

    name: str

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]: ...  # from worker threads

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]: ...  # on the loop


class HelperPool(Protocol):
    """Processes that decide chunks of a replay beside its thread (`controlplane.impact.helpers.Helpers`)."""

    count: int  # processes
    in_flight: int  # chunks each holds at once

    @property
    def alive(self) -> bool: ...

    async def decide(self, chunk: Chunk) -> tuple[list[Outcome], list[str]] | None: ...


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
        self._calls = 0  # calls answered from the replies by `transport` and `ask`
        self.used: set[str] = set()  # the requests answered from the replies (recorded, or asked anew before)
        self.asked: set[str] = set()  # distinct requests asked anew
        self.joined = 0  # calls that waited for the same request asked anew by another decision
        self.failed = 0
        self.helped = 0  # decisions replay helpers decided (`controlplane.impact.helpers`)
        self.missed = 0  # calls neither recorded nor answerable: no `reask` (answered 503, as an unreachable model)
        self.cost_usd = 0.0
        self.asked_ms: list[float] = []
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[tuple[int, Any, int]]] = {}  # key -> (status, reply, max_age)

    @property
    def recorded(self) -> int:
        """Distinct recorded judgments the replay used (requests answered from the recording, not
        asked anew): the report's count, in the unit of `asked`. Not a count of calls, which
        depends on how many decisions one evaluation covers (`http.send` answers a request once
        per evaluation, and a replay evaluates 256 decisions a call)."""
        with self._lock:
            return len(self.used - self.asked)

    @property
    def calls(self) -> int:
        """Calls answered from what the replay already knows: the recording, or an answer asked
        anew by an earlier call (the memo's hits are such calls, answered in the evaluator)."""
        return self._calls + self.memo.hits

    def credit(self, decisions: int, used: list[str]) -> None:
        """Count `decisions` a replay helper decided, with the recorded judgments it used."""
        with self._lock:
            self.helped += decisions
            self.used.update(used)

    def _miss(self) -> None:
        with self._lock:
            self.missed += 1

    def _hit(self, key: str) -> Any:
        reply = self.replies.get(key)
        if reply is not None:
            with self._lock:
                self._calls += 1
                self.used.add(key)
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
            self._miss()
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
            self._miss()
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

    def __init__(self, *args: Any, split: bool = True, **kwargs: Any) -> None:
        """`split`: False where the other cores are taken by the replay's helper processes (and in
        each of them): a chunk thread beside this one would then only contend with them for the
        cores and for the GIL (benchmarks/README.md: the replay with a helper, with and without it)."""
        super().__init__(*args, **kwargs)
        self.scheduler.budget = False
        self.scheduler.chunk = EVALUATION_CHUNK
        self.scheduler.split = split

    def _may_block(self, record: PolicyRecord) -> bool:
        return False

    def _per_input(self, record: PolicyRecord) -> float | None:
        return per_input(super()._may_block(record))  # the live classification, kept per policy version

    async def outcomes(self, contexts: list[Any], *, policy_types: list[str], tier: str,
                       constitutional_hash: str) -> list[Outcome]:
        """What the replay keeps of each decision (`decide_many`'s, through the same stages), without
        the response a caller would get: no evaluation ids, reasons, violations or timings to build."""
        return await self._stages(contexts, policy_types, tier, constitutional_hash, False, False, self._outcomes, [])

    def _outcomes(self, call: Call, start: int, staged: list[Staged], evaluator: Revision) -> list[Outcome]:
        proposals, posts, costs = self._synthesise(call, start, staged, evaluator)
        return [Outcome(verdict(p, post), strictest_by_type([(r.policy_type, r.decision) for r in p.results]),
                        round(p.wasm_us + cost, 2)) for p, post, cost in zip(proposals, posts, costs, strict=True)]


async def decide_all(candidate: Candidate, evaluator: WasmEvaluator, oracle: Oracle, decisions: list[Recorded],
                     progress: Callable[[int], Any] | None = None, helpers: HelperPool | None = None) -> list[Outcome]:
    """Each recorded decision made again by the candidate (in the order given). With `helpers`, their
    processes take chunks beside this thread (`controlplane.impact.helpers`); every chunk a helper
    hands back is decided here."""
    # with helper processes on the other cores, this thread decides its chunks without a chunk thread
    pipeline = ReplayPipeline(evaluator, lambda: candidate.records, ask_model=oracle.ask, split=helpers is None)
    out: list[Outcome | None] = [None] * len(decisions)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, d in enumerate(decisions):
        groups.setdefault(("", "", "", d.path) if d.source == "opa-agent" else
                          (tuple(d.policy_types), d.tier, d.constitutional_hash, ""), []).append(i)
    # taken from the front here, from the back by helpers
    chunks = deque((key, indexes[at:at + CHUNK]) for key, indexes in groups.items() for at in range(0, len(indexes), CHUNK))
    done = 0

    async def here(key: tuple[Any, ...], part: list[int]) -> list[Outcome]:
        types, tier, chash, path = key
        inputs = [decisions[i].input for i in part]
        if path:
            return agent_outcomes(candidate.records, evaluator, path, inputs)
        return await pipeline.outcomes(inputs, policy_types=list(types), tier=tier, constitutional_hash=chash)

    async def finish(part: list[int], found: list[Outcome]) -> None:
        nonlocal done
        for i, o in zip(part, found, strict=True):
            out[i] = o
        done += len(part)
        if progress is not None:
            await progress(done)

    async def local() -> None:
        while chunks:
            key, part = chunks.popleft()
            await finish(part, await here(key, part))

    async def helped(helpers: HelperPool) -> None:
        while chunks and helpers.alive:
            key, part = chunks.pop()
            types, tier, chash, path = key
            found = await helpers.decide(Chunk(list(types), tier, chash, [decisions[i].input for i in part], path))
            if found is not None:
                oracle.credit(len(part), found[1])  # the recorded judgments it used
            # else the helper did not decide it (a judgment it lacks, or it failed): decided here
            await finish(part, found[0] if found is not None else await here(key, part))

    try:
        # the helpers' turns first: each takes its chunk before this thread starts on its own
        others = [helped(helpers) for _ in range(helpers.count * helpers.in_flight)] if helpers is not None else []
        await asyncio.gather(*others, local())
    finally:
        await pipeline.stop()
    return [o for o in out if o is not None]


def per_input(may_block: bool) -> float:
    """A replay's deadline per input of a batched call of a policy: what the input has live. A policy
    that may ask a model gets the deadline it has live on its own thread (a judgment asked anew is a
    round trip each, 0.2-2 s at GroqCloud); any other, the live batch's share of a call's deadline
    (1 s per 25 inputs). A call's deadline is that times its inputs, so a chunk of
    `EVALUATION_CHUNK` is not failed as a whole where the same inputs live would not be."""
    return BLOCKING_TIMEOUT_S if may_block else INLINE_TIMEOUT_S / LIVE_CHUNK


def agent_outcomes(records: list[PolicyRecord], evaluator: Revision, path: str, inputs: list[Any]) -> list[Outcome]:
    """An agent's query of one policy's decision on the candidate's entrypoint for that policy, batched
    on this thread as the pipeline runs a policy (`run_batched`; a replay's thread may wait). A
    failure is a deny, as the agent's own evaluation fails closed."""
    record = next((r for r in records if rego.decision_path(r.rule_id) == path), None)
    if record is None:  # a path the candidate does not serve (the policy is gone): undefined
        return [Outcome("undefined", {}, 0.0) for _ in inputs]
    single, many = rego.wasm_entrypoint(record.rule_id), rego.wasm_batch_entrypoint(record.rule_id)
    deadline = per_input(rego.may_block(record.opa_policy))
    out = []
    for at in range(0, len(inputs), EVALUATION_CHUNK):
        part = inputs[at:at + EVALUATION_CHUNK]
        t0 = time.perf_counter_ns()
        values, errors = run_batched(evaluator, single, many, part, wrapped=True, per_input=deadline)
        us = (time.perf_counter_ns() - t0) / 1000 / len(part)
        for value, error in zip(values, errors, strict=True):
            decision = "deny" if error else decision_of(value, value is not UNDEFINED)[0]
            out.append(Outcome(decision, {record.policy_type: decision}, round(us, 2)))
    return out
