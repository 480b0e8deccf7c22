"""`/api/v1/policies`: thin HTTP handlers over `PolicyService` (the app's `policies` dependency)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request
from litestar.di import NamedDependency
from litestar.params import Body, FromPath, FromQuery, JSONBody

from bridge.kernel.vocabulary import Tier, check_hash
from controlplane.auth.guards import principal_of, requires
from controlplane.policies.schemas import (
    CompileReport,
    PolicyCreate,
    PolicyCreated,
    PolicyRecord,
    PolicyType,
    PolicyUpdate,
)
from controlplane.policies.service import PolicyService
from controlplane.routes import delete, error_responses, get, post, put

MAX_POLICY_BODY = 1024 * 1024


def _actor(request: Request) -> str:
    """Who wrote (the token's name): what a certificate's override records."""
    token = principal_of(request)
    return token.name if token is not None else ""


class CompileOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Any = None  # the input the measurement evaluates (default {})
    samples: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200


class PolicyController(Controller):
    path = "/api/v1/policies"
    tags = ["policies"]
    guards = [requires("admin")]
    request_max_body_size = MAX_POLICY_BODY

    @post("", summary="Store a policy (compiled and certified first; 422 with the compiler's messages or the failed "
          "certification checks, 409 when a model review denied it)", status_code=201,
          responses=error_responses(400, 401, 403, 409, 413, 422, 429, 503))
    async def create(self, policies: NamedDependency[PolicyService], data: JSONBody[PolicyCreate],
                     request: Request) -> PolicyCreated:
        return await policies.create(data, actor=_actor(request))

    @get("", summary="List policies", responses=error_responses(400, 401, 403, 429, 503))
    async def list_policies(self, policies: NamedDependency[PolicyService], policy_type: FromQuery[PolicyType | None] = None,
                            performance_tier: FromQuery[Tier | None] = None,
                            is_active: FromQuery[bool | None] = None) -> list[PolicyRecord]:
        return policies.list(policy_type, performance_tier, is_active)

    @get("/{rule_id:uuid}", summary="One policy (latest version)", responses=error_responses(400, 401, 403, 404, 429, 503))
    async def get_policy(self, policies: NamedDependency[PolicyService], rule_id: FromPath[uuid.UUID]) -> PolicyRecord:
        return await policies.get(rule_id)

    @get("/{rule_id:uuid}/versions", summary="Stored versions of one policy (KV history, oldest first)",
         responses=error_responses(400, 401, 403, 404, 429, 503))
    async def versions(self, policies: NamedDependency[PolicyService], rule_id: FromPath[uuid.UUID]) -> list[PolicyRecord]:
        return await policies.history(rule_id)

    @put("/{rule_id:uuid}", summary="Change a policy (fields left out keep their value)",
         responses=error_responses(400, 401, 403, 404, 409, 413, 422, 429, 503))
    async def update(self, policies: NamedDependency[PolicyService], rule_id: FromPath[uuid.UUID], data: JSONBody[PolicyUpdate],
                     request: Request) -> PolicyRecord:
        return await policies.update(rule_id, data, actor=_actor(request))

    @delete("/{rule_id:uuid}", summary="Delete a policy (its history stays in the KV bucket)", status_code=200,
            responses=error_responses(400, 401, 403, 404, 409, 422, 429, 503))
    async def remove(self, policies: NamedDependency[PolicyService], rule_id: FromPath[uuid.UUID],
                     constitutional_hash: FromQuery[str | None] = None) -> PolicyRecord:
        if constitutional_hash is not None:  # a body-less write: the hash is checked when given
            check_hash(constitutional_hash)
        return await policies.delete(rule_id)

    @post("/{rule_id:uuid}/compile", summary="Compile one policy to WASM and measure it", status_code=200,
          responses=error_responses(400, 401, 403, 404, 413, 422, 429, 503))
    async def compile(self, policies: NamedDependency[PolicyService], rule_id: FromPath[uuid.UUID],
                      data: Annotated[CompileOptions | None, Body()] = None) -> CompileReport:
        options = data or CompileOptions()
        return await policies.compile(rule_id, options.input, options.samples)
