"""Stage 3b and the model calls of stage 3: what a policy's answer becomes when a model is involved.

Two paths reach the inference workers. A policy may call a model itself (`http.send` to the bridge,
through `lib.groq`): it is evaluated on an evaluation thread, and `metered_transport` times each
call into that evaluation's `InferenceMeter` (a context variable, which the scheduler copies to
the thread). A policy with `groq_model_config` whose decision document says `needs_model: true`
gets the pipeline's own model stage (`ModelStage.consult`): its rules could not settle the
request, so the configured model is asked. A confident answer (at least `MIN_MODEL_CONFIDENCE`,
the threshold every bundle also carries for the constitution) settles a review and can veto an
allow, never undo a deny; a failed, degraded or unsure answer is review (the Rego helper's contract).
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

import msgspec

from bridge.inference.wire import InferReply, InferRequest, Route, decode_reply
from bridge.kernel.vocabulary import DECISION_RANK, MIN_MODEL_CONFIDENCE, Decision
from bridge.opawasm import InferTransport
from controlplane.evaluation.decision import PolicyOutcome, normalise, outcome, settled
from controlplane.evaluation.interfaces import AskModel, Revision
from controlplane.evaluation.scheduling import Scheduler
from controlplane.metrics.recorders import record_reply
from controlplane.policies import rego
from controlplane.policies.schemas import GroqModelConfig, PolicyRecord

MODEL_DEADLINE_MS = 3000  # the pipeline's own model stage (policies' http.send calls have their own)
BLOCKING_TIMEOUT_S = 5.0  # a policy that may consult a model (the helper's own timeout is 2 s)
REPLY_FIELDS = ("decision", "confidence", "rationale", "model", "tier", "cached", "emulated", "degraded", "latency_ms",
                "route", "usage")  # usage: tokens and the catalog's cost estimate, what a job's cost is summed from


class InferenceMeter:
    """The model calls of one policy evaluation: how long they took, how many, what they answered."""

    __slots__ = ("calls", "replies", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.replies: list[dict[str, Any]] = []


_METER: contextvars.ContextVar[InferenceMeter | None] = contextvars.ContextVar("groqpolicy_meter", default=None)


def metered_transport(inner: InferTransport) -> InferTransport:
    """The evaluator's `http.send` transport, timing each model call into the current evaluation's
    meter and counting its tokens, cost and cache hits (controlplane.metrics)."""

    def call(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        meter = _METER.get()
        t0 = time.perf_counter()
        try:
            status, reply = inner(tier, body, timeout)
        finally:
            if meter is not None:
                meter.seconds += time.perf_counter() - t0
                meter.calls += 1
        if status == 200:
            record_reply(reply)
        if meter is not None:
            summary = {k: reply.get(k) for k in REPLY_FIELDS if isinstance(reply, dict) and k in reply}
            if status != 200 and isinstance(reply, dict):
                summary["error"] = (reply.get("error") or {}).get("message", "")
            meter.replies.append({"status": status, **summary})
        return status, reply

    return call


class ModelStage:
    """The policies that wait on a model: those that call out themselves, and the model stage."""

    def __init__(self, ask_model: AskModel | None, scheduler: Scheduler) -> None:
        self.ask_model = ask_model
        self.scheduler = scheduler  # its evaluation threads, with the queue in front of them

    async def evaluate_blocking(self, evaluator: Revision, record: PolicyRecord, input: Any) -> PolicyOutcome:
        """One policy that may call a model through http.send: evaluated on an evaluation thread
        (the caller let its request in: `scheduler.blocking.admit`)."""
        meter = InferenceMeter()
        token = _METER.set(meter)
        t0 = time.perf_counter_ns()
        error = ""
        try:
            value = await self.scheduler.blocking.offload_admitted(
                evaluator.evaluate, rego.wasm_entrypoint(record.rule_id), input, timeout=BLOCKING_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - fail closed: an evaluation error is a deny
            value, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            _METER.reset(token)
        wasm_us = max(0.0, (time.perf_counter_ns() - t0) / 1000 - meter.seconds * 1e6)
        return await self.resolve(record, input, value, error, wasm_us, meter)

    async def resolve(self, record: PolicyRecord, input: Any, value: Any, error: str, wasm_us: float,
                      meter: InferenceMeter | None = None) -> PolicyOutcome:
        """A policy's outcome from what it returned; the model stage runs (awaited, over NATS)
        only when the document asks for it."""
        found = settled(record, value, error, wasm_us, meter.replies if meter else None, meter.seconds if meter else 0.0)
        if found is not None:
            return found
        meter = meter or InferenceMeter()
        decision, _, reasons = normalise(value, record.name)
        decision, confidence, reasons = await self.consult(record, input, decision, reasons, meter)
        return outcome(record, value, error, wasm_us, decision, confidence, reasons, meter.replies, meter.seconds)

    async def consult(self, record: PolicyRecord, input: Any, decision: Decision, reasons: list[str],
                      meter: InferenceMeter) -> tuple[Decision, float, list[str]]:
        """The configured model's judgment on a request the policy's rules could not settle."""
        cfg = record.groq_model_config
        assert cfg is not None  # wants_model() holds
        reply, problem, status = await self._ask(record, cfg, input, reasons, meter)
        if reply is None:
            meter.replies.append({"status": status, "error": problem, "tier": cfg.performance_tier, "stage": "pipeline"})
            return "review", 0.0, [*reasons, f"review: model unavailable: {problem}"]
        fields = {k: v for k in REPLY_FIELDS if (v := getattr(reply, k)) is not msgspec.UNSET}
        meter.replies.append({"status": 200, **msgspec.to_builtins(fields), "stage": "pipeline"})
        return judged(reply, decision, reasons)

    async def _ask(self, record: PolicyRecord, cfg: GroqModelConfig, input: Any, reasons: list[str],
                   meter: InferenceMeter) -> tuple[InferReply | None, str, int]:
        """(the model's reply or None, why there is none, the status) of one question, timed into `meter`."""
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
        except Exception as exc:  # noqa: BLE001 - a GroqPolicyError (503 no worker, 504 deadline, 4xx) or a transport failure
            status = getattr(exc, "status", 0)
            problem = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        finally:
            meter.seconds += time.perf_counter() - t0
            meter.calls += 1
        return reply, problem, status


def judged(reply: InferReply, decision: Decision, reasons: list[str]) -> tuple[Decision, float, list[str]]:
    """The policy's decision once the model answered: review below the confidence threshold or when
    degraded; otherwise the model settles a review and may make an allow stricter."""
    said = f"model ({reply.tier}, {reply.model}) judged {reply.decision} with confidence {round(reply.confidence * 100)}%"
    if reply.degraded or reply.confidence < MIN_MODEL_CONFIDENCE:
        why = "gave no usable answer" if reply.degraded else f"is below the required {round(MIN_MODEL_CONFIDENCE * 100)}%"
        return "review", reply.confidence if not reply.degraded else 0.0, [*reasons, f"review: {said}, which {why}"]
    base: Decision = "allow" if decision == "review" else decision
    settled_as = reply.decision if DECISION_RANK[reply.decision] > DECISION_RANK[base] else base
    kept = [r for r in reasons if not r.startswith("review:")] if decision == "review" else reasons
    line = f"{said}: {reply.rationale}"
    if isinstance(reply.route, Route):  # tier auto: the choice and its reason go where the decision goes
        line += f" [tier auto chose {reply.route.reason}]"
    return settled_as, reply.confidence, [*kept, line if settled_as == "allow" else f"{settled_as}: {line}"]
