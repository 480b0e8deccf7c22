"""Wire shapes of the policies API (msgspec structs) and the stored record."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, get_args

import msgspec

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, RoutableTier, Tier

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
    performance_tier: RoutableTier = "fast"  # "auto": the worker picks the tier per judgment
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

