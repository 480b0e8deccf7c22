"""`/api/v1/evaluate`, `/api/v1/evaluate/batch`, `/api/v1/groq/*` and `/api/v1/opa/evaluate`.

Handlers receive what they use, by name, from the app's dependencies (`controlplane.app`):
`pipeline`, `policies`, `evaluator`, `model_client`, `catalog`, `settings`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import msgspec
from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import JSONBody

from bridge.inference.catalog import Catalog, CatalogError
from bridge.inference.wire import InferRequest, Route, decode_reply
from bridge.kernel.config import Settings
from bridge.kernel.errors import DeadlineExceeded, GroqPolicyError, Unavailable, Unprocessable, decode_error
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, check_hash
from bridge.opawasm import UNDEFINED, WasmEvaluator
from bridge.opawasm.errors import UnknownEntrypointError
from controlplane.auth.guards import requires
from controlplane.evaluation.interfaces import Evaluator
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.runtime import ModelClient
from controlplane.evaluation.schemas import (
    MAX_BATCH,
    BatchPerformance,
    BatchRequest,
    BatchResponse,
    EvaluateRequest,
    EvaluateResponse,
    GroqModel,
    GroqModels,
    InferenceMetrics,
    InferenceRequest,
    InferenceResponse,
    MeasuredLatency,
    OpaEvaluateRequest,
    OpaEvaluateResponse,
)
from controlplane.metrics.recorders import record_reply
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.service import PolicyInactive, PolicyService
from controlplane.routes import error_responses, get, post

MAX_EVALUATE_BODY = 1024 * 1024
MAX_BATCH_BODY = 8 * 1024 * 1024


class BatchTooLarge(Unprocessable):
    pass


class UnknownModel(Unprocessable):
    pass


class Upstream(Unavailable):
    """A dependency (inference worker, OPA agent) that did not give a usable answer (503 unless
    it says otherwise: 502 for an error answer, 504 for none in time)."""


class EvaluationController(Controller):
    path = "/api/v1/evaluate"
    tags = ["evaluation"]
    guards = [requires("evaluate")]

    @post("", summary="Evaluate a context against the applicable policies", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def evaluate(self, pipeline: NamedDependency[Pipeline], data: JSONBody[EvaluateRequest]) -> EvaluateResponse:
        check_hash(data.constitutional_hash)
        return await pipeline.evaluate(
            data.input_context, policy_types=list(data.policy_types), tier=data.performance_tier,
            constitutional_hash=data.constitutional_hash, explain=data.require_explanation)

    @post("/batch", summary=f"Evaluate up to {MAX_BATCH} contexts", status_code=200, request_max_body_size=MAX_BATCH_BODY,
          responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def batch(self, pipeline: NamedDependency[Pipeline], data: JSONBody[BatchRequest]) -> BatchResponse:
        check_hash(data.constitutional_hash)
        n = len(data.batch_contexts)
        if n > MAX_BATCH:
            raise BatchTooLarge(f"batch_contexts: at most {MAX_BATCH} contexts per batch, got {n}")
        if n == 0:
            raise BatchTooLarge(f"batch_contexts: empty (expected 1 to {MAX_BATCH} contexts)")
        batch_id = uuid.uuid4()
        started = time.perf_counter()
        results = await pipeline.evaluate_batch(
            data.batch_contexts, policy_types=list(data.policy_types), tier=data.performance_tier,
            constitutional_hash=data.constitutional_hash, explain=data.require_explanation, batch_id=str(batch_id))
        total = time.perf_counter() - started
        perf = BatchPerformance(total_time_ms=round(total * 1000, 3), average_per_item_ms=round(total * 1000 / n, 4),
                                throughput_per_second=round(n / total, 1) if total > 0 else 0.0)
        return BatchResponse(batch_id=batch_id, results=list(results), batch_performance=perf)


class GroqController(Controller):
    path = "/api/v1/groq"
    tags = ["groq"]
    guards = [requires("evaluate")]

    @get("/models", summary="Models per performance tier (from the tier catalog)", responses=error_responses(401, 403, 429))
    async def models(self, catalog: NamedDependency[Catalog], model_client: NamedDependency[ModelClient]) -> GroqModels:
        measured = await model_client.measured_latency()
        rows = [GroqModel(model_name=r["model_name"], performance_tier=r["performance_tier"], max_tokens=r["max_tokens"],
                          cost_per_token=r["cost_per_token"], typical_latency_ms=r["typical_latency_ms"],
                          latency_target_ms=r["latency_target_ms"], primary=r["primary"],
                          context_window=r["context_window"], json_schema_strict=r["json_schema_strict"],
                          batch_cost_per_token=r["batch_cost_per_token"],
                          measured_latency=msgspec.convert(measured[r["model_name"]], MeasuredLatency)
                          if r["model_name"] in measured else None)
                for r in catalog.models_listing()]
        return GroqModels(models=rows, aliases={k: v.to for k, v in catalog.aliases.items()}, catalog_as_of=catalog.as_of)

    @post("/inference", summary="One model judgment through the inference workers (NATS)", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 413, 422, 429, 502, 503, 504))
    async def inference(self, catalog: NamedDependency[Catalog], model_client: NamedDependency[ModelClient],
                        data: JSONBody[InferenceRequest]) -> InferenceResponse:
        try:
            model_id, _ = catalog.resolve(data.model_name)
        except CatalogError as exc:
            raise UnknownModel(f"model_name: {exc}") from None
        tier = data.performance_tier or catalog.tier_of(model_id)
        req = InferRequest(question=data.prompt, context=data.constitutional_context or None, policy="api.groq.inference",
                           constitutional_hash=CONSTITUTIONAL_HASH, deadline_ms=data.deadline_ms, model=data.model_name,
                           max_tokens=data.max_tokens, temperature=data.temperature, strict_schema=data.strict_schema)
        started = time.perf_counter()
        try:
            status, body, _ = await model_client.connected().request(tier, msgspec.json.encode(req))
        except GroqPolicyError as exc:
            raise Upstream(f"inference: {exc.message}", status=exc.status) from exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            try:
                message = decode_error(body).error.message
            except msgspec.DecodeError:
                message = body[:200].decode(errors="replace")
            raise Upstream(f"inference: worker answered {status}: {message}", status=502 if status < 500 else status)
        reply = decode_reply(body)
        record_reply(reply)  # tokens, cost, cache hits (controlplane.metrics)
        tokens = reply.usage.completion_tokens
        gen_s = reply.usage.completion_time or (elapsed_ms / 1000)
        verdict = {"decision": reply.decision, "confidence": reply.confidence, "rationale": reply.rationale}
        return InferenceResponse(
            inference_result=msgspec.json.encode(verdict).decode(), model_used=reply.model,
            performance_metrics=InferenceMetrics(inference_time_ms=round(elapsed_ms, 3), tokens_generated=tokens,
                                                 tokens_per_second=round(tokens / gen_s, 1) if gen_s > 0 and tokens else 0.0,
                                                 queue_time_ms=round(reply.usage.queue_time * 1000, 3)),
            constitutional_compliance=reply.constitutional_hash == CONSTITUTIONAL_HASH and not reply.degraded,
            decision=reply.decision, confidence=reply.confidence, performance_tier=reply.tier, cached=reply.cached,
            emulated=reply.emulated, degraded=reply.degraded,
            resolved_from=reply.resolved_from if isinstance(reply.resolved_from, str) else None,
            route=reply.route.reason if isinstance(reply.route, Route) else None,
        )


class OpaController(Controller):
    path = "/api/v1/opa"
    tags = ["opa"]
    guards = [requires("evaluate")]

    @post("/evaluate", summary="One policy's decision: in-process WASM, or an OPA agent's REST API", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 404, 409, 413, 429, 502, 503, 504))
    async def evaluate(self, policies: NamedDependency[PolicyService], evaluator: NamedDependency[WasmEvaluator],
                       settings: NamedDependency[Settings], data: JSONBody[OpaEvaluateRequest]) -> OpaEvaluateResponse:
        record = await policies.get(data.policy_id)
        if not record.is_active:
            raise PolicyInactive(f"policy {record.rule_id}: not active (activate it with PUT is_active=true)")
        version = f"v{record.version}@{evaluator.revision or ''}"
        if data.use_wasm:
            return await _in_process(evaluator, record, data.input_data, version)
        return await _on_agent(settings.opa_url, record, data.input_data, version)


async def _in_process(evaluator: Evaluator, record: PolicyRecord, input_data: object, version: str) -> OpaEvaluateResponse:
    """The policy's decision from the in-process evaluator (a policy that may call out: on a worker thread)."""
    entry = rego.wasm_entrypoint(record.rule_id)
    started = time.perf_counter_ns()
    try:
        if rego.may_block(record.opa_policy):
            value = await asyncio.to_thread(evaluator.evaluate, entry, input_data, timeout=5.0)
        else:
            value = evaluator.evaluate(entry, input_data, timeout=1.0)
    except UnknownEntrypointError:  # stored, but this replica has not loaded it yet
        raise Upstream(f"policy {record.rule_id}: not loaded by the in-process evaluator yet "
                       f"(revision {evaluator.revision or 'none'}); retry", status=503) from None
    except DeadlineExceeded as exc:
        raise Upstream(f"wasm evaluation of {entry}: {exc}", status=504) from exc
    except Exception as exc:  # any other evaluator failure: a 503 with its cause
        raise Upstream(f"wasm evaluation of {entry}: {exc}", status=503) from exc
    us = (time.perf_counter_ns() - started) / 1000
    return OpaEvaluateResponse(result=None if value is UNDEFINED else value, execution_time_us=round(us, 2),
                               policy_version=version, engine="wasm", entrypoint=entry)


async def _on_agent(opa_url: str, record: PolicyRecord, input_data: object, version: str) -> OpaEvaluateResponse:
    """The policy's decision from the OPA agent's REST API."""
    path = rego.decision_path(record.rule_id)
    url = f"{opa_url.rstrip('/')}/v1/data/{path}"
    started = time.perf_counter_ns()
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            r = await client.post(url, json={"input": input_data})
    except httpx.HTTPError as exc:
        raise Upstream(f"OPA agent at {opa_url}: unreachable ({type(exc).__name__}: {exc})") from None
    us = (time.perf_counter_ns() - started) / 1000
    if r.status_code != 200:
        raise Upstream(f"OPA agent at {opa_url}: {r.status_code} for /v1/data/{path}: {r.text[:300]}", status=502)
    body = r.json()
    if "result" not in body:
        raise Upstream(f"OPA agent at {opa_url}: /v1/data/{path} is undefined "
                       f"(has the agent activated a bundle with policy {record.rule_id}?)", status=503)
    return OpaEvaluateResponse(result=body["result"], execution_time_us=round(us, 2), policy_version=version,
                               engine="opa", entrypoint=path)
