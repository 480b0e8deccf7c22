"""Wire shapes of the evaluation, Groq and OPA endpoints (the published API's fields, plus a few extras).

`policy.evaluate` on NATS (`EVALUATE_SUBJECT`) takes the same `EvaluateRequest` and answers the same
`EvaluateResponse` as `POST /api/v1/evaluate`: one request type per subject.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, Decision, RoutableTier, Tier
from controlplane.policies.schemas import ConstitutionalHash, PolicyType

EVALUATE_SUBJECT = "policy.evaluate"
MAX_BATCH = 100


class EvaluateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input_context: dict[str, Any]
    constitutional_hash: ConstitutionalHash
    policy_types: list[PolicyType] = []  # empty: every type
    performance_tier: Tier = "reasoning"  # policies of this tier or a faster one apply
    require_explanation: bool = False


class BatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    batch_contexts: Annotated[list[dict[str, Any]], msgspec.Meta(description=f"at most {MAX_BATCH} contexts")]
    policy_types: list[PolicyType] = []
    performance_tier: Tier = "reasoning"
    constitutional_hash: ConstitutionalHash = CONSTITUTIONAL_HASH  # optional on a batch; checked when given
    require_explanation: bool = False


class Violation(msgspec.Struct, gc=False):  # strings only: never in a cycle, and tuples of them go untracked
    principle: str
    severity: str
    message: str
    stage: str  # pre_validation | post_validation


class ConstitutionalValidation(msgspec.Struct, kw_only=True):
    constitutional_hash: str = CONSTITUTIONAL_HASH
    is_compliant: bool
    pre_validation: Decision
    post_validation: Decision | None  # None when pre-validation failed and no policy ran
    violations: list[Violation] = []


class PerformanceMetrics(msgspec.Struct, kw_only=True):
    total_latency_ms: float
    groq_inference_time_ms: float
    opa_evaluation_time_ms: float
    wasm_execution_time_us: float
    performance_tier: str
    target_latency_ms: float
    target_achieved: bool  # total_latency_ms <= target_latency_ms, measured for this request
    model_calls: int = 0


class PolicyResult(msgspec.Struct, kw_only=True):
    """One applicable policy's part in an evaluation."""

    rule_id: uuid.UUID
    name: str
    policy_type: str
    decision: Decision
    confidence_score: float
    opa_evaluation_result: Any
    groq_inference_result: list[dict[str, Any]] = []
    wasm_execution_time_us: float = 0.0
    error: str = ""


class EvaluateResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    evaluation_id: uuid.UUID
    decision: Decision
    confidence_score: float
    applicable_policies: list[uuid.UUID]
    constitutional_compliance: ConstitutionalValidation
    performance_metrics: PerformanceMetrics
    policy_results: list[PolicyResult]
    reasons: list[str]
    bundle_revision: str
    constitutional_hash: str  # always present (no default, so omit_defaults keeps it)
    explanation: str | None = None
    input_context: dict[str, Any] | None = None  # echoed in batch results only


class BatchPerformance(msgspec.Struct):
    total_time_ms: float
    average_per_item_ms: float
    throughput_per_second: float


class BatchResponse(msgspec.Struct):
    batch_id: uuid.UUID
    results: list[EvaluateResponse]
    batch_performance: BatchPerformance
    constitutional_hash: str = CONSTITUTIONAL_HASH


# ---- Groq ------------------------------------------------------------------------------------
class MeasuredLatency(msgspec.Struct, kw_only=True):
    """The workers' own calls to a model over their latency window (sketches merged across workers)."""

    count: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    workers: int


class GroqModel(msgspec.Struct, kw_only=True):
    model_name: str
    performance_tier: str
    max_tokens: int
    cost_per_token: float
    typical_latency_ms: float  # the catalog's
    latency_target_ms: float
    primary: bool
    context_window: int = 0
    json_schema_strict: bool = False
    batch_cost_per_token: float = 0.0  # through the Batch API
    measured_latency: MeasuredLatency | None = None  # null until a worker has called the model


class GroqModels(msgspec.Struct, kw_only=True):
    models: list[GroqModel]
    aliases: dict[str, str]  # retired model name -> current model
    catalog_as_of: str


class InferenceRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=32 * 1024)]
    constitutional_context: dict[str, Any] = {}
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 0.0
    performance_tier: RoutableTier | None = None  # default: the tier whose primary model this is; "auto" routes
    strict_schema: bool = False  # the answer must come from a model with strict JSON schema output
    deadline_ms: Annotated[int, msgspec.Meta(ge=1, le=120_000)] = 5000


class InferenceMetrics(msgspec.Struct, kw_only=True):
    inference_time_ms: float
    tokens_generated: int
    tokens_per_second: float
    queue_time_ms: float = 0.0


class InferenceResponse(msgspec.Struct, kw_only=True):
    inference_result: str  # the model's verdict as JSON text: {"decision", "confidence", "rationale"}
    model_used: str
    performance_metrics: InferenceMetrics
    constitutional_compliance: bool
    decision: Decision
    confidence: float
    performance_tier: str
    cached: bool
    emulated: bool
    degraded: bool
    resolved_from: str | None = None
    route: str | None = None  # tier "auto": why this tier and model
    constitutional_hash: str = CONSTITUTIONAL_HASH


# ---- OPA -------------------------------------------------------------------------------------
class OpaEvaluateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy_id: uuid.UUID
    input_data: Any = None
    use_wasm: bool = True


class OpaEvaluateResponse(msgspec.Struct, kw_only=True):
    result: Any  # the policy's decision value; null when undefined
    execution_time_us: float
    policy_version: str  # "<version>@<bundle revision>"
    engine: Literal["wasm", "opa"]
    entrypoint: str
    constitutional_hash: str = CONSTITUTIONAL_HASH
