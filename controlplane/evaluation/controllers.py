"""`/api/v1/evaluate`, `/api/v1/evaluate/batch`, `/api/v1/groq/*` and `/api/v1/opa/evaluate`."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import msgspec
from litestar import Controller
from litestar.params import JSONBody

from bridge.inference.catalog import CatalogError
from bridge.inference.wire import InferRequest, decode_reply
from bridge.kernel.errors import GroqPolicyError, decode_error
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, check_hash
from bridge.opawasm import UNDEFINED
from controlplane.auth.guards import requires
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
    OpaEvaluateRequest,
    OpaEvaluateResponse,
)
from controlplane.metrics.recorders import record_reply
from controlplane.policies import rego
from controlplane.policies.schemas import error_responses
from controlplane.policies.service import PolicyInactive
from controlplane.routes import get, post
from controlplane.services import ServicesDep

MAX_EVALUATE_BODY = 1024 * 1024
MAX_BATCH_BODY = 8 * 1024 * 1024


class BatchTooLarge(GroqPolicyError):
    status = 422


class UnknownModel(GroqPolicyError):
    status = 422


class Upstream(GroqPolicyError):
    """A dependency (inference worker, OPA agent) that did not give a usable answer."""

    status = 503


class EvaluationController(Controller):
    path = "/api/v1/evaluate"
    tags = ["evaluation"]
    guards = [requires("evaluate")]

    @post("", summary="Evaluate a context against the applicable policies", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def evaluate(self, services: ServicesDep, data: JSONBody[EvaluateRequest]) -> EvaluateResponse:
        check_hash(data.constitutional_hash)
        return await services.runtime.pipeline.evaluate(
            data.input_context, policy_types=list(data.policy_types), tier=data.performance_tier,
            constitutional_hash=data.constitutional_hash, explain=data.require_explanation)

    @post("/batch", summary=f"Evaluate up to {MAX_BATCH} contexts", status_code=200, request_max_body_size=MAX_BATCH_BODY,
          responses=error_responses(400, 401, 403, 413, 422, 429, 503))
    async def batch(self, services: ServicesDep, data: JSONBody[BatchRequest]) -> BatchResponse:
        check_hash(data.constitutional_hash)
        n = len(data.batch_contexts)
        if n > MAX_BATCH:
            raise BatchTooLarge(f"batch_contexts: at most {MAX_BATCH} contexts per batch, got {n}")
        if n == 0:
            raise BatchTooLarge("batch_contexts: empty (expected 1 to 100 contexts)")
        batch_id = uuid.uuid4()
        pipeline = services.runtime.pipeline
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
    async def models(self, services: ServicesDep) -> GroqModels:
        catalog = services.runtime.catalog
        rows = [GroqModel(model_name=r["model_name"], performance_tier=r["performance_tier"], max_tokens=r["max_tokens"],
                          cost_per_token=r["cost_per_token"], typical_latency_ms=r["typical_latency_ms"],
                          latency_target_ms=r["latency_target_ms"], primary=r["primary"])
                for r in catalog.models_listing()]
        return GroqModels(models=rows, aliases={k: v.to for k, v in catalog.aliases.items()}, catalog_as_of=catalog.as_of)

    @post("/inference", summary="One model judgment through the inference workers (NATS)", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 413, 422, 429, 502, 503, 504))
    async def inference(self, services: ServicesDep, data: JSONBody[InferenceRequest]) -> InferenceResponse:
        runtime = services.runtime
        try:
            model_id, _ = runtime.catalog.resolve(data.model_name)
        except CatalogError as exc:
            raise UnknownModel(f"model_name: {exc}") from None
        tier = data.performance_tier or runtime.catalog.tier_of(model_id)
        req = InferRequest(question=data.prompt, context=data.constitutional_context or None, policy="api.groq.inference",
                           constitutional_hash=CONSTITUTIONAL_HASH, deadline_ms=data.deadline_ms, model=data.model_name,
                           max_tokens=data.max_tokens, temperature=data.temperature)
        started = time.perf_counter()
        try:
            status, body, _ = await runtime.infer_client().request(tier, msgspec.json.encode(req))
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
        )


class OpaController(Controller):
    path = "/api/v1/opa"
    tags = ["opa"]
    guards = [requires("evaluate")]

    @post("/evaluate", summary="One policy's decision: in-process WASM, or an OPA agent's REST API", status_code=200,
          request_max_body_size=MAX_EVALUATE_BODY, responses=error_responses(400, 401, 403, 404, 409, 413, 429, 502, 503, 504))
    async def evaluate(self, services: ServicesDep, data: JSONBody[OpaEvaluateRequest]) -> OpaEvaluateResponse:
        runtime = services.runtime
        record = await runtime.policies.get(data.policy_id)
        if not record.is_active:
            raise PolicyInactive(f"policy {record.rule_id}: not active (activate it with PUT is_active=true)")
        version = f"v{record.version}@{runtime.revision()}"
        if data.use_wasm:
            entry = rego.wasm_entrypoint(record.rule_id)
            started = time.perf_counter_ns()
            try:
                if rego.may_block(record.opa_policy):
                    value = await asyncio.to_thread(runtime.evaluator.evaluate, entry, data.input_data, timeout=5.0)
                else:
                    value = runtime.evaluator.evaluate(entry, data.input_data, timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - the evaluator's error classes, reported as 5xx with the cause
                name = type(exc).__name__
                if name == "UnknownEntrypointError":  # stored, but this replica has not loaded it yet
                    raise Upstream(f"policy {record.rule_id}: not loaded by the in-process evaluator yet "
                                   f"(revision {runtime.revision() or 'none'}); retry", status=503) from None
                raise Upstream(f"wasm evaluation of {entry}: {exc}", status=504 if name == "DeadlineExceeded" else 503) from None
            us = (time.perf_counter_ns() - started) / 1000
            return OpaEvaluateResponse(result=None if value is UNDEFINED else value, execution_time_us=round(us, 2),
                                       policy_version=version, engine="wasm", entrypoint=entry)
        path = rego.decision_path(record.rule_id)
        url = f"{runtime.settings.opa_url.rstrip('/')}/v1/data/{path}"
        started = time.perf_counter_ns()
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                r = await client.post(url, json={"input": data.input_data})
        except httpx.HTTPError as exc:
            raise Upstream(f"OPA agent at {runtime.settings.opa_url}: unreachable ({type(exc).__name__}: {exc})") from None
        us = (time.perf_counter_ns() - started) / 1000
        if r.status_code != 200:
            raise Upstream(f"OPA agent at {runtime.settings.opa_url}: {r.status_code} for /v1/data/{path}: {r.text[:300]}", status=502)
        body = r.json()
        if "result" not in body:
            raise Upstream(f"OPA agent at {runtime.settings.opa_url}: /v1/data/{path} is undefined "
                           f"(has the agent activated a bundle with policy {record.rule_id}?)", status=503)
        return OpaEvaluateResponse(result=body["result"], execution_time_us=round(us, 2), policy_version=version,
                                   engine="opa", entrypoint=path)
