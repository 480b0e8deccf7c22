"""The evaluation pipeline of `/api/v1/evaluate` (and batch, and `policy.evaluate` on NATS).

1 select applicable policies (types, tier at or below the requested one, active)
2 constitutional pre-validation of the request (`constitution`); a failure ends here: deny
3 each policy's decision in the in-process WASM evaluator; `http.send` to the bridge goes straight
  to NATS (`groq.infer.<tier>`) through the evaluator's transport, timed per policy
3b model stage: a policy with `groq_model_config` whose document says `needs_model: true` gets the
  configured model's judgment through the workers (`model_stage`)
4 synthesis (`decision.propose`): deny overrides review overrides allow
5 constitutional post-validation, which can only make the outcome stricter
6 timings per stage and the tier's latency target, achieved or not, measured for this request
7 the recorder (the audit trail) gets every decision before it is answered; constitutional
  violations go to the escalation sink

Many contexts at once (a batch; one context is the case n = 1): stages 2, 3 (for policies that
cannot call out) and 5 evaluate many contexts in one call into the WASM module, through batched
entrypoints that map the single one over an input array; from `SPLIT_AT` contexts, chunks go
through the stages on two threads (`scheduling`). Every stage of one call uses the bundle revision
that was current when the call started (the evaluator's `pinned()`), which is also the revision the
responses and the audit record name.

Fail closed everywhere: a policy that errors, times out or returns something that is not a
decision counts as deny; a model that fails is review.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, TIER_TARGET_MS
from controlplane.evaluation.constitution import Constitution, MemoKey, post_key
from controlplane.evaluation.decision import (
    Frame,
    PolicyOutcome,
    PostOutcome,
    Proposal,
    applicable,
    propose,
    refused,
    respond,
    settled,
)
from controlplane.evaluation.interfaces import AskModel, DecisionRecorder, EscalationSink, Evaluator, Revision, Source
from controlplane.evaluation.model_stage import ModelStage
from controlplane.evaluation.scheduling import QUEUE, Scheduler, run_batched
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.evaluation.spread import BatchSpread, Peers
from controlplane.evaluation.staging import Call, Finish, Pending, Selection, Staged
from controlplane.infra.ids import uuid4s
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class Pipeline:
    def __init__(self, evaluator: Evaluator, policies: Callable[[], list[PolicyRecord]], *,
                 ask_model: AskModel | None = None, recorder: DecisionRecorder | None = None,
                 escalate: EscalationSink | None = None, queue: int = QUEUE, cpu_threads: int = 0, peers: Peers = None) -> None:
        """`policies()` hands out the stored policies (the same list object until the set changes); no
        `recorder`: decisions are served unrecorded (tools, tests); `queue`, `cpu_threads`: `scheduling`."""
        self.evaluator = evaluator
        self.policies = policies
        self.recorder = recorder
        self.escalate = escalate
        self.scheduler = Scheduler(evaluator.pool_size, queue=queue, cpu_threads=cpu_threads)
        self.constitution = Constitution()
        self.models = ModelStage(ask_model, self.scheduler)
        self._blocking: dict[tuple[uuid.UUID, int], bool] = {}
        self._selections: dict[tuple[Any, ...], tuple[list[PolicyRecord], Selection]] = {}
        self.spread = BatchSpread(peers, self.decide_many)  # a batch across the processes of the deployment

    async def start(self) -> None:
        """Nothing to start: the pipeline is ready once built."""

    async def stop(self) -> None:
        self.scheduler.close()

    # ---- the callers' entry points ---------------------------------------------------------------
    async def evaluate(self, input_context: dict[str, Any], *, policy_types: list[str], tier: str,
                       constitutional_hash: str, explain: bool, source: Source = "api") -> EvaluateResponse:
        """One evaluation, escalated when the constitution objects and recorded in the audit trail."""
        (response,) = await self.decide_many([input_context], policy_types=policy_types, tier=tier,
                                             constitutional_hash=constitutional_hash, explain=explain)
        if response.constitutional_compliance.violations:
            await self.escalate_violation(response, tier, source, input_context)
        if self.recorder is not None:
            await self.recorder.record(response, tier=tier, source=source, input_context=input_context, policy_types=policy_types)
        return response

    async def evaluate_batch(self, contexts: list[dict[str, Any]], *, policy_types: list[str], tier: str,
                             constitutional_hash: str, explain: bool, batch_id: str) -> list[EvaluateResponse]:
        """Every context evaluated, each escalation sent, then the whole batch recorded as one."""
        started = time.perf_counter()
        responses = await self.spread.decide_batch(contexts, policy_types, tier, constitutional_hash, explain, self.evaluator)
        for response, ctx in zip(responses, contexts, strict=True):
            if response.constitutional_compliance.violations:
                await self.escalate_violation(response, tier, "batch", ctx)
        if self.recorder is not None:
            await self.recorder.record_batch(responses, contexts, tier=tier, batch_id=batch_id,
                                             latency_ms=(time.perf_counter() - started) * 1000, policy_types=policy_types)
        return responses

    async def decide(self, input_context: dict[str, Any], *, policy_types: list[str], tier: str,
                     constitutional_hash: str, explain: bool, echo_input: bool = False) -> EvaluateResponse:
        """The decision alone: no escalation, no record (the callers above add those)."""
        (response,) = await self.decide_many([input_context], policy_types=policy_types, tier=tier,
                                             constitutional_hash=constitutional_hash, explain=explain, echo_input=echo_input)
        return response

    async def decide_many(self, contexts: list[dict[str, Any]], *, policy_types: list[str], tier: str,
                          constitutional_hash: str, explain: bool, echo_input: bool = False) -> list[EvaluateResponse]:
        """Decisions for several contexts under the same request parameters.

        With no applicable policy that can wait on a model, every stage of a chunk of contexts runs
        inline if it fits the inline budget, else on an evaluation thread (`scheduling`); otherwise
        the stages around the model calls do, and the model calls run concurrently in between.

        Timings per context: `total_latency_ms` (and the tier target it is held to) is the time the
        caller waited for the decision, i.e. the whole call's, also for a batch: its contexts are
        decided together, none is available before the others. The WASM and model parts are the
        context's own (a batched WASM call counts as an equal share per context)."""
        started = time.perf_counter()
        responses = await self._stages(contexts, policy_types, tier, constitutional_hash, explain, echo_input,
                                       self._finish, uuid4s(len(contexts)))
        total_ms = round((time.perf_counter() - started) * 1000, 4)
        achieved = total_ms <= TIER_TARGET_MS[tier]
        for response in responses:
            m = response.performance_metrics
            m.total_latency_ms = total_ms
            m.opa_evaluation_time_ms = round(max(0.0, total_ms - m.groq_inference_time_ms), 4) if m.groq_inference_time_ms else total_ms
            m.target_achieved = achieved
        return responses

    async def _stages(self, contexts: list[dict[str, Any]], policy_types: list[str], tier: str, constitutional_hash: str,
                      explain: bool, echo_input: bool, finish: Finish[_T], ids: list[uuid.UUID]) -> list[_T]:
        """Stages 2 to 5 for every context; `finish` turns a chunk's settled stages into its results."""
        n = len(contexts)
        chunked = self.scheduler.chunked
        with self.evaluator.pinned() as evaluator:  # a hot swap meanwhile does not split this call over two revisions
            selection = self.select(policy_types, tier)
            call = Call(contexts, policy_types, tier, constitutional_hash, explain, echo_input, evaluator,
                        evaluator.revision or "", selection, ids)
            if selection.rules_only:
                parts = await chunked(lambda i, j, ev: finish(call, i, self._rules(call, i, j, ev), ev), evaluator, n)
            else:
                staged = [s for part in await chunked(lambda i, j, ev: self._rules(call, i, j, ev), evaluator, n) for s in part]
                await self._model_stage(call, staged)
                parts = await chunked(lambda i, j, ev: finish(call, i, staged[i:j], ev), evaluator, n)
        return [r for part in parts for r in part]

    # ---- stage 1 ---------------------------------------------------------------------------------
    def select(self, policy_types: list[str], tier: str) -> Selection:
        """The applicable policies, worked out once per set of stored policies (the provider hands
        out the same list object until the set changes) and request parameters."""
        records = self.policies()
        key = (id(records), *policy_types, tier)
        hit = self._selections.get(key)
        if hit is not None and hit[0] is records:
            return hit[1]
        chosen = applicable(records, policy_types, tier)
        pure = [r for r in chosen if not self._may_block(r)]
        blocking = [r for r in chosen if self._may_block(r)]
        found = Selection(chosen, pure, blocking, not blocking and all(r.groq_model_config is None for r in chosen))
        if len(self._selections) >= 1024:
            self._selections.clear()
        self._selections[key] = (records, found)
        return found

    def _per_input(self, record: PolicyRecord) -> float | None:
        """The deadline per input of a batched call of `record` (None: the call's, a pure computation's)."""
        return None

    def _may_block(self, record: PolicyRecord) -> bool:
        key = (record.rule_id, record.version)
        found = self._blocking.get(key)
        if found is None:
            if len(self._blocking) > 10_000:
                self._blocking.clear()
            found = self._blocking[key] = rego.may_block(record.opa_policy)
        return found

    # ---- stages 2 to 5 ---------------------------------------------------------------------------
    def _rules(self, call: Call, start: int, stop: int, evaluator: Revision) -> list[Staged]:
        """Stages 2 and 3 (the policies that cannot call out) for the contexts `start:stop`, on any
        thread, on `evaluator` (the call's revision, inline or not). A policy runs only for the
        contexts that pass pre-validation; one that asks for the model stage is left `Pending`."""
        chunk = call.contexts[start:stop]
        t0 = time.perf_counter_ns()
        pres = self.constitution.pre_validate(evaluator, call.revision, call.constitutional_hash, chunk)
        pre_us = (time.perf_counter_ns() - t0) / 1000 / len(chunk)
        staged = [Staged(pre, pre_us) for pre in pres]
        passed = [j for j, pre in enumerate(pres) if pre.decision == "allow"]
        if passed:
            inputs = [chunk[j] for j in passed]
            for record in call.selection.pure:
                t0 = time.perf_counter_ns()
                values, errs = run_batched(evaluator, rego.wasm_entrypoint(record.rule_id),
                                           rego.wasm_batch_entrypoint(record.rule_id), inputs, wrapped=True,
                                           per_input=self._per_input(record))
                us = (time.perf_counter_ns() - t0) / 1000 / len(inputs)
                for j, value, err in zip(passed, values, errs, strict=True):
                    staged[j].outs.append(settled(record, value, err, us) or Pending(record, value, err, us))
        return staged

    async def _model_stage(self, call: Call, staged: list[Staged]) -> None:
        """Stage 3 for what may wait on a model, concurrently: the pure policies whose document asks
        for the model stage, and the policies that may call out themselves (on worker threads)."""
        if call.selection.blocking:
            self.scheduler.blocking.admit()  # Saturated (503) for the whole request, before any of it runs
        jobs = []
        slots: list[tuple[list[PolicyOutcome | Pending], int | None]] = []  # where each result goes (None: appended)
        for ctx, s in zip(call.contexts, staged, strict=True):
            if s.pre.decision != "allow":
                continue
            for k, out in enumerate(s.outs):
                if isinstance(out, Pending):
                    jobs.append(self.models.resolve(out.record, ctx, out.value, out.error, out.wasm_us))
                    slots.append((s.outs, k))
            for record in call.selection.blocking:
                jobs.append(self.models.evaluate_blocking(call.evaluator, record, ctx))
                slots.append((s.outs, None))
        if not jobs:
            return
        for (outs, at), result in zip(slots, await asyncio.gather(*jobs), strict=True):
            if at is None:
                outs.append(result)
            else:
                outs[at] = result

    def _finish(self, call: Call, start: int, staged: list[Staged], evaluator: Revision) -> list[EvaluateResponse]:
        """Stages 4 and 5 and the responses for the contexts from `start` on; on any thread."""
        proposals, posts, costs = self._synthesise(call, start, staged, evaluator)
        contexts = call.contexts
        frame = Frame(call.tier, TIER_TARGET_MS[call.tier], call.revision, [r.rule_id for r in call.selection.chosen], call.explain)
        ids, echo = call.ids, call.echo_input
        return [respond(ids[start + j], proposal, s.pre, post, cost, frame, contexts[start + j] if echo else None)
                for j, (s, proposal, post, cost) in enumerate(zip(staged, proposals, posts, costs, strict=True))]

    def _synthesise(self, call: Call, start: int, staged: list[Staged],
                    evaluator: Revision) -> tuple[list[Proposal], list[PostOutcome | None], list[float]]:
        """Stages 4 and 5 for the contexts from `start` on: each one's proposal, post-validation
        outcome (None: it failed pre-validation) and post-validation WASM time."""
        contexts, revision, h = call.contexts, call.revision, call.constitutional_hash
        proposals = []
        keys: list[MemoKey | None] = []
        for j, s in enumerate(staged):
            if s.pre.decision == "allow":
                # after the model stage, every entry is the policy's outcome
                proposal = propose(cast("list[PolicyOutcome]", s.outs), s.wasm_us, call.policy_types, call.tier)
                keys.append(post_key(revision, h, proposal, contexts[start + j]))
            else:
                proposal = refused(s.pre, s.wasm_us)
                keys.append(None)
            proposals.append(proposal)
        posts, costs = self.constitution.post_validate(evaluator, keys)
        return proposals, posts, costs

    # ---- stage 7 ---------------------------------------------------------------------------------
    async def escalate_violation(self, response: EvaluateResponse, tier: str, source: str, input_context: dict[str, Any]) -> None:
        """A response's constitutional violations to the escalation sink (an evaluation job's too)."""
        if self.escalate is None:
            return
        try:
            await self.escalate({
                "evaluation_id": str(response.evaluation_id), "decision": response.decision, "source": source,
                "violations": [msgspec.structs.asdict(v) for v in response.constitutional_compliance.violations],
                "constitutional_hash": CONSTITUTIONAL_HASH, "performance_tier": tier,
                "policy_ids": [str(p) for p in response.applicable_policies],
                "input_context": input_context,  # the sink publishes its digest, never the input
            })
        except Exception:
            log.exception("escalation for %s could not be published", response.evaluation_id)
