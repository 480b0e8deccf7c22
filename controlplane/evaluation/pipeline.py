"""The evaluation pipeline of `/api/v1/evaluate` (and batch, and `policy.evaluate` on NATS).

1 select applicable policies (types, tier at or below the requested one, active)
2 constitutional pre-validation (`groqpolicy/constitution/pre_validation`); a failure ends here: deny
3 each policy's decision in the in-process WASM evaluator; `http.send` to the bridge goes straight
  to NATS (`groq.infer.<tier>`) through the evaluator's transport, timed per policy
3b model stage: a policy with `groq_model_config` whose document says `needs_model: true` gets the
  configured model's judgment through the workers (see `_consult`)
4 synthesis: deny overrides review overrides allow; confidence = the least confident policy among
  those that produced the outcome; no applicable policy = deny
5 constitutional post-validation (`groqpolicy/constitution/post_validation`), which can only make
  the outcome stricter
6 timings per stage and the tier's latency target, achieved or not, measured for this request
7 the record goes to the audit sink; constitutional violations to the escalation sink

Many contexts at once (a batch; one context is the case n = 1): stages 2, 3 (for policies that
cannot call out) and 5 evaluate every context in one call into the WASM module, through batched
entrypoints that map the single one over an input array (`pre_validations`, `post_validations`,
each policy's `groqpolicy_decisions`); from `SPLIT_AT` contexts the array is halved and the halves
run on two threads (the GIL is released while WASM runs). A batched call that fails for another
reason than its deadline is redone one context at a time, so each error lands on its own context.

Fail closed everywhere: a policy that errors, times out or returns something that is not a
decision counts as deny; a model that fails is review (the Rego helper's contract).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from bridge.wasm import UNDEFINED
from bridge.wire import InferRequest, decode_reply
from controlplane.constitution import CONSTITUTIONAL_HASH
from controlplane.evaluation.ids import uuid4s
from controlplane.evaluation.schemas import (
    ConstitutionalValidation,
    EvaluateResponse,
    PerformanceMetrics,
    PolicyResult,
    Violation,
)
from controlplane.metrics.recorders import record_reply
from controlplane.policies import rego
from controlplane.policies.schemas import TIER_TARGET_MS, TIERS, PolicyRecord

log = logging.getLogger(__name__)

PRE = "groqpolicy/constitution/pre_validation"
POST = "groqpolicy/constitution/post_validation"
PRE_MANY = "groqpolicy/constitution/pre_validations"
POST_MANY = "groqpolicy/constitution/post_validations"
SPLIT_AT = 16  # a batched evaluation of at least this many inputs runs as two halves on two threads
INLINE_TIMEOUT_S = 1.0  # a policy without network calls: pure computation
BLOCKING_TIMEOUT_S = 5.0  # a policy that may consult a model (the helper's own timeout is 2 s)
WASM_POOL_SIZE = 16  # instances of the in-process evaluator (each a few MiB of linear memory)
POST_MEMO_SIZE = 4096
MODEL_DEADLINE_MS = 3000  # the pipeline's own model stage (policies' http.send calls have their own)
MIN_MODEL_CONFIDENCE = 0.7
_RANK = {"allow": 0, "review": 1, "deny": 2}
_encode = msgspec.json.Encoder(order="deterministic").encode
_TIER_RANK = {t: i for i, t in enumerate(TIERS)}


class AuditSink(Protocol):
    """Where every evaluation record goes (the audit trail provides `append`)."""

    async def append(self, record: Any) -> Any: ...


EscalationSink = Callable[[dict[str, Any]], Awaitable[None]]


# ---- model-call metering ----------------------------------------------------------------------
class InferenceMeter:
    __slots__ = ("seconds", "calls", "replies")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.replies: list[dict[str, Any]] = []


_METER: contextvars.ContextVar[InferenceMeter | None] = contextvars.ContextVar("groqpolicy_meter", default=None)
_REPLY_FIELDS = ("decision", "confidence", "rationale", "model", "tier", "cached", "emulated", "degraded", "latency_ms")


def metered_transport(inner: Callable[[str, Any, float], tuple[int, Any]], loop_thread: int) -> Callable[[str, Any, float], tuple[int, Any]]:
    """Wrap the evaluator's NATS transport: time each model call into the current evaluation's meter
    (asyncio.to_thread copies the context), and refuse a call made on the event loop's own thread,
    which would otherwise wait on itself until the deadline."""

    def call(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        if threading.get_ident() == loop_thread:
            return 503, {"error": {"message": "http.send evaluated on the event loop thread; refused",
                                   "type": "unavailable_error", "code": "evaluated_inline"}}
        meter = _METER.get()
        t0 = time.perf_counter()
        try:
            status, reply = inner(tier, body, timeout)
        finally:
            if meter is not None:
                meter.seconds += time.perf_counter() - t0
                meter.calls += 1
        if status == 200:
            record_reply(reply)  # tokens, cost, cache hits (controlplane.metrics)
        if meter is not None:
            summary = {k: reply.get(k) for k in _REPLY_FIELDS if isinstance(reply, dict) and k in reply}
            if status != 200 and isinstance(reply, dict):
                summary["error"] = (reply.get("error") or {}).get("message", "")
            meter.replies.append({"status": status, **summary})
        return status, reply

    return call


# ---- decisions ----------------------------------------------------------------------------------
def strictest(a: str, b: str) -> str:
    return a if _RANK.get(a, 2) >= _RANK.get(b, 2) else b


def normalise(value: Any, name: str) -> tuple[str, float, list[str]]:
    """(decision, confidence, reasons) from whatever a policy returned; anything unusable is deny."""
    if value is UNDEFINED:
        return "deny", 0.0, [f"deny: policy {name!r}: decision is undefined"]
    if isinstance(value, dict) and value.get("decision") in _RANK:
        conf = value.get("confidence")
        ok = isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0 <= conf <= 1
        reasons = [r for r in value.get("reasons") or [] if isinstance(r, str)]
        return value["decision"], float(conf) if ok else 0.0, reasons
    if isinstance(value, str) and value in _RANK:
        return value, 1.0, [f"{value}: policy {name!r} decided {value}" if value != "allow" else f"policy {name!r} decided allow"]
    if isinstance(value, bool):
        return ("allow", 1.0, [f"policy {name!r} allowed"]) if value else ("deny", 1.0, [f"deny: policy {name!r} denied"])
    shown = msgspec.json.encode(value).decode()[:200]
    return "deny", 0.0, [f"deny: policy {name!r} returned no decision document (got {shown})"]


def _wants_model(record: PolicyRecord, value: Any, decision: str) -> bool:
    """The pipeline's model stage applies: the document asks for it and the policy has a model configured."""
    return (decision != "deny" and record.groq_model_config is not None and isinstance(value, dict)
            and value.get("needs_model") is True)


def applicable(records: list[PolicyRecord], policy_types: list[str], tier: str) -> list[PolicyRecord]:
    limit = _TIER_RANK[tier]
    types = set(policy_types)
    chosen = [r for r in records if r.is_active and (not types or r.policy_type in types)
              and _TIER_RANK[r.performance_tier] <= limit]
    return sorted(chosen, key=lambda r: (-r.priority, r.created_at, str(r.rule_id)))


def _violations(doc: Any, stage: str) -> list[Violation]:
    if not isinstance(doc, dict):
        return []
    return [Violation(principle=str(v.get("principle", "")), severity=str(v.get("severity", "")),
                      message=str(v.get("message", "")), stage=stage)
            for v in doc.get("violations") or [] if isinstance(v, dict)]


class _PostOutcome:
    """What the pipeline takes from a post-validation document (memoised with it: many evaluations
    propose the same decision). `reasons`/`confidence` None: keep the proposal's."""

    __slots__ = ("decision", "violations", "reasons", "confidence")

    def __init__(self, decision: str, violations: list[Violation], reasons: list[str] | None, confidence: float | None) -> None:
        self.decision, self.violations, self.reasons, self.confidence = decision, violations, reasons, confidence

    @classmethod
    def of(cls, doc: Any) -> _PostOutcome:
        if not isinstance(doc, dict):
            return cls("deny", [], None, None)
        reasons = doc.get("reasons")
        c = doc.get("confidence")
        ok = isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1
        return cls(doc.get("decision", "deny"), _violations(doc, "post_validation"),
                   [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else None, float(c) if ok else None)


class Pipeline:
    def __init__(self, evaluator: Any, policies: Callable[[], list[PolicyRecord]], revision: Callable[[], str]) -> None:
        self.evaluator = evaluator  # bridge.wasm.WasmEvaluator (hot-swapped by the runtime)
        self.policies = policies
        self.revision = revision
        self.audit: AuditSink | None = None
        self.escalate: EscalationSink | None = None
        # `await ask_model(tier, InferRequest JSON)` -> (status, body, max_age): bridge InferClient.request
        self.ask_model: Callable[[str, bytes], Awaitable[tuple[int, bytes, int]]] | None = None
        self._blocking: dict[tuple[uuid.UUID, int], bool] = {}
        # Evaluations that may call http.send hold a WASM instance while the event loop fetches the
        # model's answer. Inline evaluations (pre/post-validation, pure policies) take an instance on
        # the loop thread itself: if blocking ones held every instance, the loop would wait for an
        # instance that only the loop can free, until the http.send deadline. Keep one free: every
        # evaluation off the loop thread (blocking ones, the worker-thread half of a batched call)
        # takes a slot first.
        pool = getattr(evaluator, "pool_size", None) or WASM_POOL_SIZE
        self._blocking_slots = asyncio.Semaphore(max(1, pool - 1))
        # post-validation is a pure function of its input and the bundle (no time, no http.send in the
        # constitution): proposals repeat a lot (same decision, same reasons), so answers are memoised
        # per revision. Bounded; cleared when full.
        self._post_memo: dict[tuple[str, bytes], Any] = {}

    def _may_block(self, record: PolicyRecord) -> bool:
        key = (record.rule_id, record.version)
        found = self._blocking.get(key)
        if found is None:
            if len(self._blocking) > 10_000:
                self._blocking.clear()
            found = self._blocking[key] = rego.may_block(record.opa_policy)
        return found

    async def _evaluate_many(self, single: str, many: str, inputs: list[Any], *, wrapped: bool) -> tuple[list[Any], list[str], float]:
        """(value per input, error per input or "", µs per input) of an entrypoint that cannot block.

        One input goes to the `single` entrypoint; several to the batched `many` one (whose answer is
        a value per input, or with `wrapped` `[value]` / `[]` for undefined), halved over two threads
        from SPLIT_AT inputs. A batched call that fails is redone one input at a time, except when it
        ran out of time: then every input of it fails with that error."""
        n = len(inputs)
        t0 = time.perf_counter_ns()
        if n > 1:
            evaluate = self.evaluator.evaluate
            try:
                if n >= SPLIT_AT:
                    half = n // 2
                    # the half on a worker thread holds an instance like a blocking evaluation does, so
                    # the loop thread's half always finds the instance kept free for it
                    async with self._blocking_slots:
                        other = asyncio.get_running_loop().run_in_executor(
                            None, functools.partial(evaluate, many, inputs[half:], timeout=INLINE_TIMEOUT_S))
                        try:
                            first = evaluate(many, inputs[:half], timeout=INLINE_TIMEOUT_S)
                        finally:
                            second = await other
                    out = [*first, *second]
                else:
                    out = list(evaluate(many, inputs, timeout=INLINE_TIMEOUT_S))
                if len(out) != n:
                    raise ValueError(f"{many}: {len(out)} results for {n} inputs")
                if wrapped:
                    out = [v[0] if v else UNDEFINED for v in out]
                return out, [""] * n, (time.perf_counter_ns() - t0) / 1000 / n
            except Exception as exc:  # noqa: BLE001 - redone one by one below, or every input fails closed
                if type(exc).__name__ == "DeadlineExceeded":
                    why = f"{type(exc).__name__}: {exc} (one evaluation for {n} contexts)"
                    return [None] * n, [why] * n, (time.perf_counter_ns() - t0) / 1000 / n
                log.debug("batched evaluation of %s failed (%r); evaluating one by one", many, exc)
        values: list[Any] = []
        errors: list[str] = []
        for x in inputs:
            try:
                values.append(self.evaluator.evaluate(single, x, timeout=INLINE_TIMEOUT_S))
                errors.append("")
            except Exception as exc:  # noqa: BLE001 - fail closed: the caller turns it into a deny
                values.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
        return values, errors, (time.perf_counter_ns() - t0) / 1000 / max(n, 1)

    async def _eval_policy(self, record: PolicyRecord, input: Any) -> tuple[PolicyResult, float, list[str]]:
        """One policy that may call a model through http.send: evaluated on a worker thread."""
        meter = InferenceMeter()
        token = _METER.set(meter)
        t0 = time.perf_counter_ns()
        error = ""
        try:
            async with self._blocking_slots:
                value = await asyncio.to_thread(self.evaluator.evaluate, rego.wasm_entrypoint(record.rule_id), input,
                                                timeout=BLOCKING_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - fail closed: an evaluation error is a deny
            value, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            _METER.reset(token)
        wasm_us = max(0.0, (time.perf_counter_ns() - t0) / 1000 - meter.seconds * 1e6)
        return await self._policy_result(record, input, value, error, wasm_us, meter)

    async def _policy_result(self, record: PolicyRecord, input: Any, value: Any, error: str, wasm_us: float,
                             meter: InferenceMeter | None = None) -> tuple[PolicyResult, float, list[str]]:
        """A policy's result from what it returned: its result, the seconds spent on models, its reasons.
        The model stage runs (awaited, over NATS) only when the document asks for it."""
        if error:
            decision, confidence, reasons = "deny", 0.0, [f"deny: policy {record.name!r} could not be evaluated: {error}"]
        else:
            decision, confidence, reasons = normalise(value, record.name)
            if _wants_model(record, value, decision):
                meter = meter or InferenceMeter()
                decision, confidence, reasons = await self._consult(record, input, decision, reasons, meter)
        result = PolicyResult(
            rule_id=record.rule_id, name=record.name, policy_type=record.policy_type, decision=decision,  # type: ignore[arg-type]
            confidence_score=confidence, opa_evaluation_result=None if error or value is UNDEFINED else value,
            groq_inference_result=meter.replies if meter is not None else [], wasm_execution_time_us=round(wasm_us, 2),
            error=error,
        )
        return result, meter.seconds if meter is not None else 0.0, reasons

    async def _consult(self, record: PolicyRecord, input: Any, decision: str, reasons: list[str],
                       meter: InferenceMeter) -> tuple[str, float, list[str]]:
        """The pipeline's model stage, for a policy with `groq_model_config` whose decision document
        says `needs_model: true`: its rules could not settle the request. The configured model is asked
        through the workers (NATS); a confident answer settles a review and can veto an allow, never
        undo a deny; a failed, degraded or unsure answer is review."""
        cfg = record.groq_model_config
        assert cfg is not None
        question = cfg.constitutional_prompt or (
            f"The rules of policy {record.name!r} could not settle this request. Answer allow, deny or review.")
        context = {"input": input, "policy_context": cfg.policy_context, "policy_reasons": reasons}
        body = msgspec.json.encode(InferRequest(question=question, context=context, policy=record.name,
                                                model=cfg.model_name, deadline_ms=MODEL_DEADLINE_MS))
        t0 = time.perf_counter()
        reply, problem, status = None, "", 0
        try:
            if self.ask_model is None:
                raise RuntimeError("no NATS connection for model calls")
            status, data, _ = await self.ask_model(cfg.performance_tier, body)
            if status == 200:
                reply = decode_reply(data)
                record_reply(reply)
            else:
                problem = f"worker answered HTTP {status}: {data[:200].decode(errors='replace')}"
        except Exception as exc:  # noqa: BLE001 - BridgeError (503 no worker, 504 deadline, 4xx) or transport failure
            status = getattr(exc, "status", 0)
            problem = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        finally:
            meter.seconds += time.perf_counter() - t0
            meter.calls += 1
        if reply is None:
            meter.replies.append({"status": status, "error": problem, "tier": cfg.performance_tier, "stage": "pipeline"})
            return "review", 0.0, [*reasons, f"review: model unavailable: {problem}"]
        meter.replies.append({"status": 200, **{k: getattr(reply, k) for k in _REPLY_FIELDS}, "stage": "pipeline"})
        said = f"model ({reply.tier}, {reply.model}) judged {reply.decision} with confidence {round(reply.confidence * 100)}%"
        if reply.degraded or reply.confidence < MIN_MODEL_CONFIDENCE:
            why = "gave no usable answer" if reply.degraded else f"is below the required {round(MIN_MODEL_CONFIDENCE * 100)}%"
            return "review", reply.confidence if not reply.degraded else 0.0, [*reasons, f"review: {said}, which {why}"]
        outcome = strictest("allow" if decision == "review" else decision, reply.decision)
        kept = [r for r in reasons if not r.startswith("review:")] if decision == "review" else reasons
        line = f"{said}: {reply.rationale}"
        return outcome, reply.confidence, [*kept, line if outcome == "allow" else f"{outcome}: {line}"]

    async def evaluate(self, input_context: dict[str, Any], *, policy_types: list[str], tier: str,
                       constitutional_hash: str, explain: bool, source: str = "api") -> EvaluateResponse:
        """One evaluation, escalated when the constitution objects and recorded in the audit trail."""
        response = await self.decide(input_context, policy_types=policy_types, tier=tier,
                                     constitutional_hash=constitutional_hash, explain=explain)
        await self._escalate(response, tier, source, input_context)
        if self.audit is not None:
            await self.audit.append(audit_record(response, tier, source, "", input_context))
        return response

    async def evaluate_batch(self, contexts: list[dict[str, Any]], *, policy_types: list[str], tier: str,
                             constitutional_hash: str, explain: bool, batch_id: str) -> list[EvaluateResponse]:
        """Every context evaluated (policies that may call a model concurrently), each escalation
        sent, then the whole batch recorded as one audit record."""
        started = time.perf_counter()
        responses = await self.decide_many(contexts, policy_types=policy_types, tier=tier,
                                           constitutional_hash=constitutional_hash, explain=explain, echo_input=True)
        for response, ctx in zip(responses, contexts):
            await self._escalate(response, tier, "batch", ctx)
        if self.audit is not None:
            await self.audit.append(batch_audit_record(responses, contexts, tier, batch_id, (time.perf_counter() - started) * 1000))
        return responses

    async def decide(self, input_context: dict[str, Any], *, policy_types: list[str], tier: str,
                     constitutional_hash: str, explain: bool, echo_input: bool = False) -> EvaluateResponse:
        """The decision alone: no escalation, no audit record (the callers above add those)."""
        (response,) = await self.decide_many([input_context], policy_types=policy_types, tier=tier,
                                             constitutional_hash=constitutional_hash, explain=explain, echo_input=echo_input)
        return response

    async def decide_many(self, contexts: list[dict[str, Any]], *, policy_types: list[str], tier: str,
                          constitutional_hash: str, explain: bool, echo_input: bool = False) -> list[EvaluateResponse]:
        """Decisions for several contexts under the same request parameters, stage by stage.

        Timings per context: `total_latency_ms` (and the tier target it is held to) is the time the
        caller waited for the decision, i.e. the whole call's, also for a batch: its contexts are
        decided together, none is available before the others. The WASM and model parts are the
        context's own (a batched WASM call counts as an equal share per context)."""
        started = time.perf_counter()
        n = len(contexts)
        revision = self.revision()
        chosen = applicable(self.policies(), policy_types, tier)
        wasm_us = [0.0] * n
        # 2 pre-validation
        pres, errors, us = await self._evaluate_many(
            PRE, PRE_MANY, [{**c, "constitutional_hash": constitutional_hash} for c in contexts], wrapped=False)
        pre_docs: list[Any] = []
        for i in range(n):
            wasm_us[i] += us
            if errors[i]:
                pre_docs.append({"decision": "deny", "reasons": [f"deny: constitutional pre-validation could not run: {errors[i]}"], "confidence": 1})
            else:
                pre_docs.append(pres[i])
        pre_decisions = [d.get("decision", "deny") if isinstance(d, dict) else "deny" for d in pre_docs]
        passed = [i for i in range(n) if pre_decisions[i] == "allow"]
        # 3 policies: those that cannot call out, all contexts in one evaluation; the others one by one
        # (model calls inside, through NATS), concurrently
        outs: list[list[tuple[PolicyResult, float, list[str]]]] = [[] for _ in range(n)]
        if passed:
            inputs = [contexts[i] for i in passed]
            for record in chosen:
                if self._may_block(record):
                    continue
                values, errs, us = await self._evaluate_many(
                    rego.wasm_entrypoint(record.rule_id), rego.wasm_batch_entrypoint(record.rule_id), inputs, wrapped=True)
                for k, i in enumerate(passed):
                    outs[i].append(await self._policy_result(record, contexts[i], values[k], errs[k], us))
            blocking = [(i, r) for i in passed for r in chosen if self._may_block(r)]
            if blocking:
                for (i, _), out in zip(blocking, await asyncio.gather(*(self._eval_policy(r, contexts[i]) for i, r in blocking))):
                    outs[i].append(out)
        # 4 synthesis, per context
        results: list[list[PolicyResult]] = [[] for _ in range(n)]
        model_s = [0.0] * n
        decisions: list[str] = list(pre_decisions)
        confidences = [1.0] * n
        reasons_of: list[list[str]] = [[] for _ in range(n)]
        post_inputs: dict[int, dict[str, Any]] = {}
        for i in range(n):
            if pre_decisions[i] != "allow":
                pre = pre_docs[i]
                decisions[i] = strictest("deny", pre_decisions[i])
                reasons_of[i] = ["deny: Constitutional pre-validation failed", *(pre.get("reasons", []) if isinstance(pre, dict) else [])]
                continue
            reasons: list[str] = []
            for res, secs, rs in outs[i]:
                results[i].append(res)
                model_s[i] += secs
                wasm_us[i] += res.wasm_execution_time_us
                reasons.extend(rs)
            if results[i]:
                decision = "allow"
                for res in results[i]:
                    decision = strictest(decision, res.decision)
                confidence = min(res.confidence_score for res in results[i] if res.decision == decision)
                # as in lib.decision: deny reasons, then review reasons; an allow lists its own reasons
                if decision != "allow":
                    reasons = [r for r in reasons if r.startswith("deny:")] + [r for r in reasons if r.startswith("review:")]
            else:
                decision, confidence = "deny", 1.0
                kinds = ", ".join(policy_types) or "any type"
                reasons = [f"deny: no active policy applies ({kinds}, tier {tier} or faster)"]
            decisions[i], confidences[i], reasons_of[i] = decision, confidence, reasons
            model_based = any(r.get("status") == 200 for res in results[i] for r in res.groq_inference_result)
            proposed: dict[str, Any] = {"decision": decision, "reasons": reasons, "confidence": confidence,
                                        "constitutional_hash": CONSTITUTIONAL_HASH, "model_based": model_based}
            post_input: dict[str, Any] = {"decision": proposed, "constitutional_hash": constitutional_hash}
            if isinstance(contexts[i].get("oversight"), dict):
                post_input["oversight"] = contexts[i]["oversight"]
            post_inputs[i] = post_input
        # 5 post-validation (memoised: a pure function of its input and the revision)
        post_outcomes: dict[int, _PostOutcome] = {}
        misses: list[tuple[int, tuple[str, bytes]]] = []
        for i, post_input in post_inputs.items():
            key = (revision, _encode(post_input))
            hit = self._post_memo.get(key)
            if hit is None:
                misses.append((i, key))
            else:
                post_outcomes[i] = hit
        if misses:
            values, errs, us = await self._evaluate_many(POST, POST_MANY, [post_inputs[i] for i, _ in misses], wrapped=False)
            for (i, key), doc, err in zip(misses, values, errs):
                wasm_us[i] += us
                if err:
                    doc = {"decision": "deny", "reasons": [f"deny: constitutional post-validation could not run: {err}"], "confidence": 1}
                outcome = post_outcomes[i] = _PostOutcome.of(doc)
                if not err and isinstance(doc, dict):
                    if len(self._post_memo) >= POST_MEMO_SIZE:
                        self._post_memo.clear()
                    self._post_memo[key] = outcome
        # 6 timings, responses
        elapsed_ms = (time.perf_counter() - started) * 1000
        target = TIER_TARGET_MS[tier]
        ids = uuid4s(n)
        chosen_ids = [r.rule_id for r in chosen]  # one list shared by the responses (never mutated)
        responses = []
        for i in range(n):
            violations = _violations(pre_docs[i], "pre_validation")
            decision, confidence, reasons = decisions[i], confidences[i], reasons_of[i]
            post_decision: str | None = None
            post = post_outcomes.get(i)
            if post is not None:
                post_decision = post.decision
                violations.extend(post.violations)
                decision = strictest(decision, post_decision)
                if post.reasons is not None:
                    reasons = post.reasons
                if post.confidence is not None:
                    confidence = post.confidence
            model_ms = model_s[i] * 1000
            total_ms = elapsed_ms
            metrics = PerformanceMetrics(
                total_latency_ms=round(total_ms, 4), groq_inference_time_ms=round(model_ms, 4),
                opa_evaluation_time_ms=round(max(0.0, total_ms - model_ms), 4), wasm_execution_time_us=round(wasm_us[i], 2),
                performance_tier=tier, target_latency_ms=target, target_achieved=total_ms <= target,
                model_calls=sum(len(res.groq_inference_result) for res in results[i]),
            )
            compliance = ConstitutionalValidation(is_compliant=not violations, pre_validation=pre_decisions[i],  # type: ignore[arg-type]
                                                  post_validation=post_decision, violations=violations)  # type: ignore[arg-type]
            responses.append(EvaluateResponse(
                evaluation_id=ids[i], decision=decision, confidence_score=round(min(1.0, max(0.0, confidence)), 6),  # type: ignore[arg-type]
                applicable_policies=chosen_ids if pre_decisions[i] == "allow" else [],
                constitutional_compliance=compliance, performance_metrics=metrics, policy_results=results[i],
                reasons=reasons, bundle_revision=revision, constitutional_hash=CONSTITUTIONAL_HASH,
                explanation=explain_text(decision, confidence, results[i], violations, pre_decisions[i]) if explain else None,
                input_context=contexts[i] if echo_input else None,
            ))
        return responses

    async def _escalate(self, response: EvaluateResponse, tier: str, source: str, input_context: dict[str, Any]) -> None:
        if self.escalate is not None and response.constitutional_compliance.violations:
            try:
                await self.escalate({
                    "evaluation_id": str(response.evaluation_id), "decision": response.decision, "source": source,
                    "violations": [msgspec.structs.asdict(v) for v in response.constitutional_compliance.violations],
                    "constitutional_hash": CONSTITUTIONAL_HASH, "performance_tier": tier,
                    "policy_ids": [str(p) for p in response.applicable_policies],
                    "input_context": input_context,  # the sink publishes its digest, never the input
                })
            except Exception:  # noqa: BLE001 - an escalation that cannot be sent is logged, the decision stands
                log.exception("escalation for %s could not be published", response.evaluation_id)


def audit_record(response: EvaluateResponse, tier: str, source: str, batch_id: str = "",
                 input_context: dict[str, Any] | None = None) -> Any:
    """The audit trail's record for one evaluation (controlplane.audit.AuditRecord)."""
    from controlplane.audit import AuditRecord  # the audit package is optional for the pipeline
    from controlplane.audit.records import digest

    return AuditRecord(
        source=source, decision=response.decision, evaluation_id=str(response.evaluation_id), batch_id=batch_id,  # type: ignore[arg-type]
        policy_ids=[str(p) for p in response.applicable_policies], bundle_revisions={"groqpolicy": response.bundle_revision},
        performance_tier=tier, confidence_score=response.confidence_score, reasons=response.reasons[:50],
        violations=[f"{v.principle}: {v.message}" for v in response.constitutional_compliance.violations],
        latency_ms=response.performance_metrics.total_latency_ms,
        input_sha256=digest(input_context) if input_context is not None else "",  # ties the record to its input
    )


def batch_audit_record(responses: list[EvaluateResponse], contexts: list[dict[str, Any]], tier: str, batch_id: str,
                       latency_ms: float) -> Any:
    """One audit record for a whole batch: an entry per evaluation (controlplane.audit.records)."""
    from controlplane.audit import AuditRecord
    from controlplane.audit.records import EvaluationEntry, digest

    entries = []
    decision = "allow"
    policy_ids: dict[str, None] = {}
    revisions: dict[str, None] = {}
    as_text: dict[int, list[str]] = {}  # the responses of a batch share their applicable-policy list
    for response, ctx in zip(responses, contexts):
        ids = as_text.get(id(response.applicable_policies))
        if ids is None:
            ids = as_text[id(response.applicable_policies)] = [str(p) for p in response.applicable_policies]
            policy_ids.update(dict.fromkeys(ids))
        revisions[response.bundle_revision] = None
        decision = strictest(decision, response.decision)
        entries.append(EvaluationEntry(
            evaluation_id=str(response.evaluation_id), decision=response.decision, policy_ids=ids,
            confidence_score=response.confidence_score, reasons=response.reasons[:50],
            violations=[f"{v.principle}: {v.message}" for v in response.constitutional_compliance.violations],
            input_sha256=digest(ctx), latency_ms=response.performance_metrics.total_latency_ms))
    revision = next(iter(revisions), "")
    return AuditRecord(
        source="batch", decision=decision, batch_id=batch_id, policy_ids=list(policy_ids),
        bundle_revisions={"groqpolicy": revision}, performance_tier=tier, latency_ms=round(latency_ms, 4),
        evaluations=entries,
    )


def explain_text(decision: str, confidence: float, results: list[PolicyResult], violations: list[Violation], pre: str) -> str:
    lines = [f"Decision: {decision} (confidence {confidence:.2f})."]
    if pre != "allow":
        lines.append("Constitutional pre-validation failed; no policy was evaluated.")
    for res in results:
        doc = res.opa_evaluation_result if isinstance(res.opa_evaluation_result, dict) else {}
        reasons = "; ".join(r for r in doc.get("reasons", []) if isinstance(r, str)) or res.error or "no reasons given"
        lines.append(f"Policy {res.name!r} ({res.policy_type}): {res.decision} (confidence {res.confidence_score:.2f}): {reasons}.")
        for reply in res.groq_inference_result:
            if reply.get("rationale"):
                lines.append(f"  Model {reply.get('model')} ({reply.get('tier')}) judged {reply.get('decision')} "
                             f"with confidence {reply.get('confidence')}: {reply['rationale']}")
            elif reply.get("error"):
                lines.append(f"  Model call failed (HTTP {reply.get('status')}): {reply['error']}")
    for v in violations:
        lines.append(f"Constitution ({v.stage}, {v.principle}, {v.severity}): {v.message}.")
    return "\n".join(lines)
