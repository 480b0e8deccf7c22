"""The evaluation pipeline of `/api/v1/evaluate` (and batch, and `policy.evaluate` on NATS).

1 select applicable policies (types, tier at or below the requested one, active)
2 constitutional pre-validation (`groqpolicy/constitution/pre_validation`) of the request's
  `PRE_FIELDS` (memoised on them per revision); a failure ends here: deny
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
cannot call out) and 5 evaluate many contexts in one call into the WASM module, through batched
entrypoints that map the single one over an input array (`pre_validations`, `post_validations`,
each policy's `groqpolicy_decisions`). From `SPLIT_AT` contexts, chunks of `CHUNK` contexts go
through the stages on two threads, the event loop's and a helper (the GIL is released while WASM
runs, so one thread's Python overlaps the other's WASM). A batched call that fails for another
reason than its deadline is redone one context at a time, so each error lands on its own context.
Every stage of one call uses the bundle revision that was current when the call started (the
evaluator's `pinned()`), which is also the revision the responses and the audit record name.

Fail closed everywhere: a policy that errors, times out or returns something that is not a
decision counts as deny; a model that fails is review (the Rego helper's contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import msgspec

from bridge.inference.wire import InferRequest, decode_reply
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from bridge.opawasm import UNDEFINED
from controlplane.evaluation.schemas import (
    ConstitutionalValidation,
    EvaluateResponse,
    PerformanceMetrics,
    PolicyResult,
    Violation,
)
from controlplane.infra.ids import uuid4s
from controlplane.metrics.recorders import record_reply
from controlplane.policies import rego
from controlplane.policies.schemas import TIER_TARGET_MS, TIERS, PolicyRecord

log = logging.getLogger(__name__)

PRE = "groqpolicy/constitution/pre_validation"
POST = "groqpolicy/constitution/post_validation"
PRE_MANY = "groqpolicy/constitution/pre_validations"
POST_MANY = "groqpolicy/constitution/post_validations"
SPLIT_AT = 16  # from this many contexts, a batch is decided on two threads, in chunks of
CHUNK = 25  # this many contexts (each hand-over of the GIL between the threads costs tens of µs here)
INLINE_TIMEOUT_S = 1.0  # a policy without network calls: pure computation
BLOCKING_TIMEOUT_S = 5.0  # a policy that may consult a model (the helper's own timeout is 2 s)
WASM_POOL_SIZE = 16  # instances of the in-process evaluator (each a few MiB of linear memory)
POST_MEMO_SIZE = 4096
PRE_MEMO_SIZE = 4096
# What pre-validation sees of a request: its input contract (rego/constitution/constitution.rego),
# with the call's constitutional hash. Requests repeat these (one principal sends many), so the
# answers are memoised per revision like post-validation's.
PRE_FIELDS = ("principal", "oversight", "audit", "options")
MODEL_DEADLINE_MS = 3000  # the pipeline's own model stage (policies' http.send calls have their own)
MIN_MODEL_CONFIDENCE = 0.7
_RANK = {"allow": 0, "review": 1, "deny": 2}
_encode = msgspec.json.Encoder(order="deterministic").encode
_TIER_RANK = {t: i for i, t in enumerate(TIERS)}
_T = TypeVar("_T")
_O = TypeVar("_O")


class AuditSink(Protocol):
    """Where every evaluation record goes (the audit trail provides `append`)."""

    async def append(self, record: Any) -> Any: ...


EscalationSink = Callable[[dict[str, Any]], Awaitable[None]]


# ---- model-call metering ----------------------------------------------------------------------
class InferenceMeter:
    __slots__ = ("calls", "replies", "seconds")

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


def _confidence(value: Any) -> float | None:
    """A confidence as the constitution takes it: a number in [0, 1] (not a boolean), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return None


def normalise(value: Any, name: str) -> tuple[str, float, list[str]]:
    """(decision, confidence, reasons) from whatever a policy returned; anything unusable is deny."""
    if value is UNDEFINED:
        return "deny", 0.0, [f"deny: policy {name!r}: decision is undefined"]
    if isinstance(value, dict) and value.get("decision") in _RANK:
        conf = _confidence(value.get("confidence"))
        reasons = [r for r in value.get("reasons") or [] if isinstance(r, str)]
        return value["decision"], 0.0 if conf is None else conf, reasons
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


def _settled(record: PolicyRecord, value: Any, error: str, wasm_us: float,
             meter: InferenceMeter | None) -> tuple[PolicyResult, float, list[str]] | None:
    """A policy's result when its rules settle it (no model stage), else None."""
    if error:
        return _result(record, value, error, wasm_us, meter, "deny", 0.0,
                       [f"deny: policy {record.name!r} could not be evaluated: {error}"])
    decision, confidence, reasons = normalise(value, record.name)
    if _wants_model(record, value, decision):
        return None
    return _result(record, value, error, wasm_us, meter, decision, confidence, reasons)


def _result(record: PolicyRecord, value: Any, error: str, wasm_us: float, meter: InferenceMeter | None,
            decision: str, confidence: float, reasons: list[str]) -> tuple[PolicyResult, float, list[str]]:
    """(the policy's result, seconds spent on models, its reasons)."""
    result = PolicyResult(
        rule_id=record.rule_id, name=record.name, policy_type=record.policy_type, decision=decision,  # type: ignore[arg-type]
        confidence_score=confidence, opa_evaluation_result=None if error or value is UNDEFINED else value,
        groq_inference_result=meter.replies if meter is not None else [], wasm_execution_time_us=round(wasm_us, 2),
        error=error,
    )
    return result, meter.seconds if meter is not None else 0.0, reasons


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


def pre_input(context: dict[str, Any], constitutional_hash: str) -> dict[str, Any]:
    """The constitution's pre-validation input for a request: `PRE_FIELDS` of its context and the
    call's constitutional hash (not one the context may carry)."""
    out = {k: context[k] for k in PRE_FIELDS if k in context}
    out["constitutional_hash"] = constitutional_hash
    return out


_ABSENT = b""  # a field the context does not have (no JSON encoding is empty)


def _pre_key(revision: str, constitutional_hash: str, context: dict[str, Any]) -> tuple[Any, ...]:
    """What pre-validation's answer depends on: the revision and `pre_input` (a text field as it
    is, anything else by its JSON; bytes and text never compare equal)."""
    key: list[Any] = [revision, constitutional_hash]
    for k in PRE_FIELDS:
        v = context.get(k, _ABSENT)
        key.append(v if type(v) is str or v is _ABSENT else _encode(v))
    return tuple(key)


def _post_input(key: tuple[Any, ...]) -> dict[str, Any]:
    """The constitution's post-validation input for its memo key (built in `_finish`)."""
    _, constitutional_hash, decision, confidence, model_based, reasons, oversight = key
    proposed = {"decision": decision, "reasons": list(reasons), "confidence": confidence,
                "constitutional_hash": CONSTITUTIONAL_HASH, "model_based": model_based}
    out: dict[str, Any] = {"decision": proposed, "constitutional_hash": constitutional_hash}
    if oversight is not None:
        out["oversight"] = msgspec.json.decode(oversight)
    return out


class _PreOutcome:
    """What the pipeline takes from a pre-validation document (memoised with it)."""

    __slots__ = ("decision", "doc", "violations")

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.decision = doc.get("decision", "deny") if isinstance(doc, dict) else "deny"
        self.violations = _violations(doc, "pre_validation")


class _PostOutcome:
    """What the pipeline takes from a post-validation document (memoised with it: many evaluations
    propose the same decision). `reasons`/`confidence` None: keep the proposal's."""

    __slots__ = ("confidence", "decision", "reasons", "violations")

    def __init__(self, decision: str, violations: list[Violation], reasons: list[str] | None, confidence: float | None) -> None:
        self.decision, self.violations, self.reasons, self.confidence = decision, violations, reasons, confidence

    @classmethod
    def of(cls, doc: Any) -> _PostOutcome:
        if not isinstance(doc, dict):
            return cls("deny", [], None, None)
        reasons = doc.get("reasons")
        return cls(doc.get("decision", "deny"), _violations(doc, "post_validation"),
                   [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else None, _confidence(doc.get("confidence")))


class _Request:
    """One `decide_many` call's parameters and what it settled up front."""

    __slots__ = (
        "chosen",
        "constitutional_hash",
        "contexts",
        "echo_input",
        "evaluator",
        "explain",
        "ids",
        "policy_types",
        "pure",
        "revision",
        "tier",
    )

    def __init__(self, contexts: list[dict[str, Any]], policy_types: list[str], tier: str, constitutional_hash: str,
                 explain: bool, echo_input: bool, evaluator: Any, revision: str, chosen: list[PolicyRecord],
                 pure: list[PolicyRecord], ids: list[uuid.UUID]) -> None:
        self.contexts, self.policy_types, self.tier, self.constitutional_hash = contexts, policy_types, tier, constitutional_hash
        self.explain, self.echo_input = explain, echo_input
        self.evaluator, self.revision = evaluator, revision  # the bundle revision every stage of the call uses
        self.chosen, self.pure, self.ids = chosen, pure, ids


class _Pending:
    """A pure policy's answer that asks for the model stage (awaited on the event loop)."""

    __slots__ = ("error", "record", "value", "wasm_us")

    def __init__(self, record: PolicyRecord, value: Any, error: str, wasm_us: float) -> None:
        self.record, self.value, self.error, self.wasm_us = record, value, error, wasm_us


class _Staged:
    """One context after stages 2 and 3: its pre-validation and each policy's result so far."""

    __slots__ = ("outs", "pre", "pre_decision", "wasm_us")

    def __init__(self, pre: _PreOutcome, wasm_us: float) -> None:
        self.pre, self.pre_decision, self.wasm_us = pre, pre.decision, wasm_us
        self.outs: list[Any] = []  # (PolicyResult, model seconds, reasons), or _Pending until the model stage


class Pipeline:
    def __init__(self, evaluator: Any, policies: Callable[[], list[PolicyRecord]], revision: Callable[[], str]) -> None:
        self.evaluator = evaluator  # bridge.opawasm.WasmEvaluator (hot-swapped by the runtime)
        self.policies = policies
        self.revision = revision
        self.audit: AuditSink | None = None
        self.escalate: EscalationSink | None = None
        # `await ask_model(tier, InferRequest JSON)` -> (status, body, max_age): bridge InferClient.request
        self.ask_model: Callable[[str, bytes], Awaitable[tuple[int, bytes, int]]] | None = None
        self._blocking: dict[tuple[uuid.UUID, int], bool] = {}
        self._chosen: dict[tuple[Any, ...], tuple[list[PolicyRecord], tuple[list[PolicyRecord], list[PolicyRecord], bool]]] = {}
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
        self._post_memo: dict[tuple[Any, ...], _PostOutcome] = {}
        self._pre_memo: dict[tuple[Any, ...], _PreOutcome] = {}  # _pre_key -> outcome
        # the second thread of chunked evaluations (the loop thread is the first)
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wasm-chunks")

    def _applicable(self, policy_types: list[str], tier: str) -> tuple[list[PolicyRecord], list[PolicyRecord], bool]:
        """(the applicable policies, those that cannot call out, whether none can wait on a model),
        worked out once per set of stored policies (the provider hands out the same list object
        until the set changes) and request parameters."""
        records = self.policies()
        key = (id(records), *policy_types, tier)
        hit = self._chosen.get(key)
        if hit is not None and hit[0] is records:
            return hit[1]
        chosen = applicable(records, policy_types, tier)
        pure = [r for r in chosen if not self._may_block(r)]
        found = (chosen, pure, len(pure) == len(chosen) and all(r.groq_model_config is None for r in chosen))
        if len(self._chosen) >= 1024:
            self._chosen.clear()
        self._chosen[key] = (records, found)
        return found

    def _may_block(self, record: PolicyRecord) -> bool:
        key = (record.rule_id, record.version)
        found = self._blocking.get(key)
        if found is None:
            if len(self._blocking) > 10_000:
                self._blocking.clear()
            found = self._blocking[key] = rego.may_block(record.opa_policy)
        return found

    def _run(self, evaluator: Any, single: str, many: str, inputs: list[Any], *, wrapped: bool) -> tuple[list[Any], list[str]]:
        """(value per input, error per input or "") of an entrypoint that cannot block, on this thread.

        One input goes to the `single` entrypoint; several to the batched `many` one (whose answer is
        a value per input, or with `wrapped` `[value]` / `[]` for undefined). A batched call that fails
        is redone one input at a time, except when it ran out of time: then every input of it fails
        with that error."""
        n = len(inputs)
        evaluate = evaluator.evaluate
        if n > 1:
            try:
                out = evaluate(many, inputs, timeout=INLINE_TIMEOUT_S)
                if not isinstance(out, list) or len(out) != n:
                    raise ValueError(f"{many}: no list of {n} results")
                if wrapped:
                    out = [v[0] if v else UNDEFINED for v in out]
                return out, [""] * n
            except Exception as exc:  # noqa: BLE001 - redone one by one below, or every input fails closed
                if type(exc).__name__ == "DeadlineExceeded":
                    why = f"{type(exc).__name__}: {exc} (one evaluation for {n} contexts)"
                    return [None] * n, [why] * n
                log.debug("batched evaluation of %s failed (%r); evaluating one by one", many, exc)
        values: list[Any] = []
        errors: list[str] = []
        for x in inputs:
            try:
                values.append(evaluate(single, x, timeout=INLINE_TIMEOUT_S))
                errors.append("")
            except Exception as exc:  # noqa: BLE001 - fail closed: the caller turns it into a deny
                values.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
        return values, errors

    async def _chunked(self, work: Callable[[int, int], _T], n: int) -> list[_T]:
        """`work(start, stop)` over consecutive chunks of `range(n)`, in order.

        Below SPLIT_AT items: one call, on the loop thread. From SPLIT_AT up, chunks of CHUNK items
        that the loop thread and a helper thread take in turn as each finishes one (the GIL is
        released while WASM runs), so both cores work until the last chunk whatever the helper's
        start-up delay; the loop thread then waits only for the chunk the helper holds."""
        if n < SPLIT_AT:
            return [work(0, n)]
        bounds = [(k, min(k + CHUNK, n)) for k in range(0, n, CHUNK)]
        out: list[Any] = [None] * len(bounds)
        claims = itertools.count()  # next() on it is atomic: each chunk goes to exactly one thread

        def take_chunks() -> None:
            while (k := next(claims)) < len(bounds):
                out[k] = work(*bounds[k])

        # the helper holds an instance like a blocking evaluation does, so the loop thread always
        # finds the instance kept free for it
        async with self._blocking_slots:
            helper = self._helper.submit(take_chunks)
            try:
                take_chunks()
            finally:
                if not helper.cancel():  # not started yet: the loop thread did everything
                    helper.result()  # at most the one chunk it holds
        return out

    async def _eval_policy(self, evaluator: Any, record: PolicyRecord, input: Any) -> tuple[PolicyResult, float, list[str]]:
        """One policy that may call a model through http.send: evaluated on a worker thread."""
        meter = InferenceMeter()
        token = _METER.set(meter)
        t0 = time.perf_counter_ns()
        error = ""
        try:
            async with self._blocking_slots:
                value = await asyncio.to_thread(evaluator.evaluate, rego.wasm_entrypoint(record.rule_id), input,
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
        settled = _settled(record, value, error, wasm_us, meter)
        if settled is not None:
            return settled
        meter = meter or InferenceMeter()
        decision, _, reasons = normalise(value, record.name)
        decision, confidence, reasons = await self._consult(record, input, decision, reasons, meter)
        return _result(record, value, error, wasm_us, meter, decision, confidence, reasons)

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
        if response.constitutional_compliance.violations:
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
            if response.constitutional_compliance.violations:
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
        """Decisions for several contexts under the same request parameters.

        When no applicable policy can wait on a model, every stage of a chunk of contexts runs on
        whichever of two threads takes it (`_chunked`): one thread's Python overlaps the other's
        WASM. Otherwise the stages before and after the model calls run that way, and the model
        calls, concurrently, on the event loop in between.

        Timings per context: `total_latency_ms` (and the tier target it is held to) is the time the
        caller waited for the decision, i.e. the whole call's, also for a batch: its contexts are
        decided together, none is available before the others. The WASM and model parts are the
        context's own (a batched WASM call counts as an equal share per context)."""
        started = time.perf_counter()
        n = len(contexts)
        pinned = getattr(self.evaluator, "pinned", None)  # a hot swap meanwhile does not split this call over two revisions
        with pinned() if pinned is not None else contextlib.nullcontext(self.evaluator) as evaluator:
            chosen, pure, rules_only = self._applicable(policy_types, tier)
            req = _Request(contexts, policy_types, tier, constitutional_hash, explain, echo_input, evaluator,
                           getattr(evaluator, "revision", None) or self.revision(), chosen, pure, uuid4s(n))
            if rules_only:
                parts = await self._chunked(lambda start, stop: self._finish(req, start, stop, self._rules(req, start, stop)), n)
            else:
                staged = [s for part in await self._chunked(lambda start, stop: self._rules(req, start, stop), n) for s in part]
                await self._model_stage(req, staged)
                parts = await self._chunked(lambda start, stop: self._finish(req, start, stop, staged[start:stop]), n)
        responses = [r for part in parts for r in part]
        total_ms = round((time.perf_counter() - started) * 1000, 4)
        achieved = total_ms <= TIER_TARGET_MS[tier]
        for response in responses:
            m = response.performance_metrics
            m.total_latency_ms = total_ms
            m.opa_evaluation_time_ms = round(max(0.0, total_ms - m.groq_inference_time_ms), 4) if m.groq_inference_time_ms else total_ms
            m.target_achieved = achieved
        return responses

    def _rules(self, req: _Request, start: int, stop: int) -> list[_Staged]:
        """Stage 2 (pre-validation) and 3 for the policies that cannot call out, for the contexts
        `start:stop`; on any thread. A policy is evaluated only for the contexts that pass
        pre-validation; one that asks for the model stage is left `_Pending`."""
        chunk = req.contexts[start:stop]
        size = stop - start
        t0 = time.perf_counter_ns()
        pres = self._pre_validations(req, chunk)
        pre_us = (time.perf_counter_ns() - t0) / 1000 / size
        staged = [_Staged(pre, pre_us) for pre in pres]
        passed = [j for j in range(size) if staged[j].pre_decision == "allow"]
        if passed:
            inputs = [chunk[j] for j in passed]
            for record in req.pure:
                t0 = time.perf_counter_ns()
                values, errs = self._run(req.evaluator, rego.wasm_entrypoint(record.rule_id), rego.wasm_batch_entrypoint(record.rule_id),
                                         inputs, wrapped=True)
                us = (time.perf_counter_ns() - t0) / 1000 / len(inputs)
                for j, value, err in zip(passed, values, errs):
                    staged[j].outs.append(_settled(record, value, err, us, None) or _Pending(record, value, err, us))
        return staged

    def _pre_validations(self, req: _Request, chunk: list[dict[str, Any]]) -> list[_PreOutcome]:
        """Stage 2 for `chunk`: a pre-validation outcome per context, a pure function of
        `pre_input` and the revision (`_constitution_stage`)."""
        h = req.constitutional_hash
        outcomes, _ = self._constitution_stage(
            req.evaluator, self._pre_memo, PRE_MEMO_SIZE, [_pre_key(req.revision, h, ctx) for ctx in chunk],
            lambda key, j: pre_input(chunk[j], h), PRE, PRE_MANY, "pre-validation", _PreOutcome)
        return outcomes

    def _constitution_stage(self, evaluator: Any, memo: dict[tuple[Any, ...], _O], memo_size: int,
                            keys: list[tuple[Any, ...] | None], input_of: Callable[[tuple[Any, ...], int], Any],
                            single: str, many: str, stage: str, outcome_of: Callable[[Any], _O]) -> tuple[list[_O | None], list[float]]:
        """A constitution entrypoint (pre- or post-validation) for items given by their memo keys
        (None: the item skips the stage): its outcome per item, and the WASM µs each item cost.

        The answer is a pure function of the key (which includes the revision): a memoised one
        costs nothing; each missing key is evaluated once (`input_of(key, first item with it)`), all
        of them in one batched call, and its time is shared among them. An evaluation that could
        not run is a deny and is not memoised. Bounded: the memo is cleared when full."""
        outcomes: list[_O | None] = [None if key is None else memo.get(key) for key in keys]
        costs = [0.0] * len(keys)
        misses: dict[tuple[Any, ...], list[int]] = {}
        for j, key in enumerate(keys):
            if key is not None and outcomes[j] is None:
                misses.setdefault(key, []).append(j)
        if misses:
            missing = list(misses)
            t0 = time.perf_counter_ns()
            values, errors = self._run(evaluator, single, many, [input_of(key, misses[key][0]) for key in missing], wrapped=False)
            us = (time.perf_counter_ns() - t0) / 1000 / len(missing)
            for key, doc, err in zip(missing, values, errors):
                if err:
                    doc = {"decision": "deny", "reasons": [f"deny: constitutional {stage} could not run: {err}"], "confidence": 1}
                outcome = outcome_of(doc)
                if not err and isinstance(doc, dict):
                    if len(memo) >= memo_size:
                        memo.clear()
                    memo[key] = outcome
                for j in misses[key]:
                    outcomes[j] = outcome
                    costs[j] = us
        return outcomes, costs

    async def _model_stage(self, req: _Request, staged: list[_Staged]) -> None:
        """Stage 3 for what may wait on a model, concurrently: the pure policies whose document asks
        for the model stage, and the policies that may call out themselves (on worker threads)."""
        jobs: list[Awaitable[tuple[PolicyResult, float, list[str]]]] = []
        slots: list[tuple[list[Any], int]] = []
        blocking = [r for r in req.chosen if self._may_block(r)]
        for ctx, s in zip(req.contexts, staged):
            if s.pre_decision != "allow":
                continue
            for k, out in enumerate(s.outs):
                if isinstance(out, _Pending):
                    jobs.append(self._policy_result(out.record, ctx, out.value, out.error, out.wasm_us))
                    slots.append((s.outs, k))
            for record in blocking:
                s.outs.append(None)
                jobs.append(self._eval_policy(req.evaluator, record, ctx))
                slots.append((s.outs, len(s.outs) - 1))
        for (outs, k), result in zip(slots, await asyncio.gather(*jobs)):
            outs[k] = result

    def _finish(self, req: _Request, start: int, stop: int, staged: list[_Staged]) -> list[EvaluateResponse]:
        """Stages 4 (synthesis), 5 (post-validation) and the responses for the contexts `start:stop`;
        on any thread. The call's total time is filled in by `decide_many`."""
        size = stop - start
        decisions: list[str] = []
        confidences: list[float] = []
        reasons_of: list[list[str]] = []
        results_of: list[list[PolicyResult]] = []
        model_s = [0.0] * size
        wasm_us = [s.wasm_us for s in staged]
        post_keys: list[tuple[Any, ...] | None] = [None] * size  # what post-validation's answer depends on
        for j, s in enumerate(staged):
            results: list[PolicyResult] = []
            results_of.append(results)
            if s.pre_decision != "allow":
                pre = s.pre.doc
                decisions.append(strictest("deny", s.pre_decision))
                confidences.append(1.0)
                reasons_of.append(["deny: Constitutional pre-validation failed", *(pre.get("reasons", []) if isinstance(pre, dict) else [])])
                continue
            reasons: list[str] = []
            model_based = False
            for res, secs, rs in s.outs:
                results.append(res)
                model_s[j] += secs
                wasm_us[j] += res.wasm_execution_time_us
                reasons.extend(rs)
                if res.groq_inference_result and not model_based:
                    model_based = any(r.get("status") == 200 for r in res.groq_inference_result)
            if results:
                decision = "allow"
                for res in results:
                    decision = strictest(decision, res.decision)
                confidence = 1.0
                for res in results:
                    if res.decision == decision and res.confidence_score < confidence:
                        confidence = res.confidence_score
                # as in lib.decision: deny reasons, then review reasons; an allow lists its own reasons
                if decision != "allow":
                    reasons = [r for r in reasons if r.startswith("deny:")] + [r for r in reasons if r.startswith("review:")]
            else:
                decision, confidence = "deny", 1.0
                kinds = ", ".join(req.policy_types) or "any type"
                reasons = [f"deny: no active policy applies ({kinds}, tier {req.tier} or faster)"]
            decisions.append(decision)
            confidences.append(confidence)
            reasons_of.append(reasons)
            oversight = req.contexts[start + j].get("oversight")
            post_keys[j] = (req.revision, req.constitutional_hash, decision, confidence, model_based, tuple(reasons),
                            _encode(oversight) if isinstance(oversight, dict) else None)
        # 5 post-validation of what each context's policies propose
        posts, costs = self._constitution_stage(req.evaluator, self._post_memo, POST_MEMO_SIZE, post_keys,
                                                lambda key, j: _post_input(key), POST, POST_MANY, "post-validation", _PostOutcome.of)
        for j, us in enumerate(costs):
            wasm_us[j] += us
        # 6 responses
        tier, target, chosen_ids = req.tier, TIER_TARGET_MS[req.tier], [r.rule_id for r in req.chosen]
        responses = []
        for j, s in enumerate(staged):
            i = start + j
            results = results_of[j]
            violations = s.pre.violations
            decision, confidence, reasons = decisions[j], confidences[j], reasons_of[j]
            post_decision: str | None = None
            post = posts[j]
            if post is not None:
                post_decision = post.decision
                if post.violations:
                    violations = [*violations, *post.violations]
                decision = strictest(decision, post_decision)
                if post.reasons is not None:
                    reasons = post.reasons
                if post.confidence is not None:
                    confidence = post.confidence
            model_calls = 0
            for res in results:
                if res.groq_inference_result:
                    model_calls += len(res.groq_inference_result)
            metrics = PerformanceMetrics(
                total_latency_ms=0.0, groq_inference_time_ms=round(model_s[j] * 1000, 4) if model_s[j] else 0.0,
                opa_evaluation_time_ms=0.0, wasm_execution_time_us=round(wasm_us[j], 2), performance_tier=tier,
                target_latency_ms=target, target_achieved=False, model_calls=model_calls,
            )
            # `violations` may be shared with other responses (the memoised pre-validation's): never mutated
            compliance = ConstitutionalValidation(is_compliant=not violations, pre_validation=s.pre_decision,  # type: ignore[arg-type]
                                                  post_validation=post_decision, violations=violations)  # type: ignore[arg-type]
            responses.append(EvaluateResponse(
                evaluation_id=req.ids[i], decision=decision, confidence_score=round(min(1.0, max(0.0, confidence)), 6),  # type: ignore[arg-type]
                applicable_policies=chosen_ids if s.pre_decision == "allow" else [],
                constitutional_compliance=compliance, performance_metrics=metrics, policy_results=results,
                reasons=reasons, bundle_revision=req.revision, constitutional_hash=CONSTITUTIONAL_HASH,
                explanation=explain_text(decision, confidence, results, violations, s.pre_decision) if req.explain else None,
                input_context=req.contexts[i] if req.echo_input else None,
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
            except Exception:
                log.exception("escalation for %s could not be published", response.evaluation_id)


def audit_record(response: EvaluateResponse, tier: str, source: str, batch_id: str = "",
                 input_context: dict[str, Any] | None = None) -> Any:
    """The audit trail's record for one evaluation (controlplane.audit.AuditRecord)."""
    from controlplane.audit import AuditRecord  # the audit package is optional for the pipeline
    from controlplane.audit.records import digest

    return AuditRecord(
        source=source, decision=response.decision, evaluation_id=str(response.evaluation_id), batch_id=batch_id,  # type: ignore[arg-type]
        policy_ids=msgspec.to_builtins(response.applicable_policies), bundle_revisions={"groqpolicy": response.bundle_revision},
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
    evaluation_ids = msgspec.to_builtins([r.evaluation_id for r in responses])  # canonical text, without a str() each
    for response, ctx, evaluation_id in zip(responses, contexts, evaluation_ids):
        ids = as_text.get(id(response.applicable_policies))
        if ids is None:
            ids = as_text[id(response.applicable_policies)] = [str(p) for p in response.applicable_policies]
            policy_ids.update(dict.fromkeys(ids))
        revisions[response.bundle_revision] = None
        decision = strictest(decision, response.decision)
        entries.append(EvaluationEntry(
            evaluation_id=evaluation_id, decision=response.decision, policy_ids=ids,
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
