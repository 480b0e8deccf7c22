"""Wire shapes of the policies API (msgspec structs) and the stored record."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar.openapi import ResponseSpec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, Tier

PolicyType = Literal[
    "constitutional_compliance", "data_governance", "ethical_constraints", "regulatory_compliance",
    "operational_policies", "security_policies", "risk_management",
]
POLICY_TYPES: tuple[str, ...] = get_args(PolicyType)

# The API declares the hash as an enum of one value; it is checked by hand (not by the type) so
# that a mismatch names the expected hash instead of a bare "invalid enum value".
ConstitutionalHash = Annotated[str, msgspec.Meta(
    description=f"must be {CONSTITUTIONAL_HASH}", extra_json_schema={"enum": [CONSTITUTIONAL_HASH]},
)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
RegoText = Annotated[str, msgspec.Meta(min_length=1, max_length=256 * 1024, description="Rego v1 module; must define `decision`")]
Principle = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class GroqModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model_name: str = "openai/gpt-oss-20b"
    performance_tier: Tier = "fast"
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 512
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 0.0
    constitutional_prompt: str = ""
    policy_context: str = ""
    response_schema: str = ""


class PolicyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    policy_type: PolicyType
    opa_policy: RegoText
    constitutional_hash: ConstitutionalHash
    performance_tier: Tier = "balanced"
    groq_model_config: GroqModelConfig | None = None
    constitutional_principles: list[Principle] = []
    priority: int = 0
    is_active: bool = True


class PolicyUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """PUT body: the hash is required; any other field left out keeps its stored value."""

    constitutional_hash: ConstitutionalHash
    name: Name | msgspec.UnsetType = msgspec.UNSET
    policy_type: PolicyType | msgspec.UnsetType = msgspec.UNSET
    opa_policy: RegoText | msgspec.UnsetType = msgspec.UNSET
    performance_tier: Tier | msgspec.UnsetType = msgspec.UNSET
    groq_model_config: GroqModelConfig | msgspec.UnsetType | None = msgspec.UNSET
    constitutional_principles: list[Principle] | msgspec.UnsetType = msgspec.UNSET
    priority: int | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


class PolicyRecord(msgspec.Struct, kw_only=True):
    """What the KV bucket holds per policy (one KV revision per version), and what GET returns."""

    rule_id: uuid.UUID
    name: str
    policy_type: PolicyType
    opa_policy: str
    performance_tier: Tier
    constitutional_hash: str = CONSTITUTIONAL_HASH
    groq_model_config: GroqModelConfig | None = None
    constitutional_principles: list[str] = []
    priority: int = 0
    is_active: bool = True
    version: int = 1
    created_at: str = ""
    updated_at: str = ""
    package: str = ""  # the package the control plane assigned (see controlplane.policies.rego)
    entrypoint: str = ""  # where OPA agents serve the decision: POST /v1/data/<entrypoint>
    wasm_compilation_status: Literal["success", "failed", "pending"] = "pending"
    bytecode_size: int = 0  # size of policy.wasm of the last standalone compile
    source_sha256: str = ""


class PolicyCreated(msgspec.Struct, kw_only=True):
    rule_id: uuid.UUID
    wasm_compilation_status: Literal["success", "failed"]
    version: int
    entrypoint: str
    bundle_revision: str
    constitutional_hash: str = CONSTITUTIONAL_HASH


class CompileReport(msgspec.Struct, kw_only=True):
    rule_id: uuid.UUID
    compilation_status: Literal["success", "failed"]
    bytecode_size: int
    performance_estimate: float  # µs: median of measured evaluations of the compiled module
    performance_samples: int
    performance_p99_us: float
    entrypoint: str
    version: int
    artifact: str  # object-store name of the compiled wasm bundle
    constitutional_hash: str = CONSTITUTIONAL_HASH


# ---- error bodies, as documented in the OpenAPI schema ---------------------------------------
class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str  # the exception's class name: ConstitutionalHashMismatch, CompileError, PolicyNotFound, ...
    message: str
    details: Any = None  # request validation: [{message, key, source}]
    stage: str | None = None  # CompileError: check | test | build | load
    messages: list[dict[str, Any]] | None = None  # CompileError: [{stage, message, code, file, row, col}]


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


_ERROR_TEXT = {
    400: "Malformed JSON or a body/query that does not match the schema",
    401: "No or unknown bearer token",
    403: "The token lacks the required scope",
    404: "Unknown policy (or path)",
    409: "Conflicting concurrent change, or the policy is not active",
    413: "Request body too large",
    422: "Constitutional hash mismatch, Rego that does not compile, or a batch over 100 contexts",
    429: "Rate limit exceeded",
    502: "A dependency answered with an error",
    503: "NATS, an inference worker or the OPA agent is unavailable",
    504: "A dependency did not answer in time",
}


def error_responses(*codes: int) -> dict[int, Any]:
    """`responses=` for a route: the product's `{"error": {...}}` body for each status code."""
    return {c: ResponseSpec(data_container=ErrorBody, description=_ERROR_TEXT[c], generate_examples=False) for c in codes}
