"""`GET /api/v1/audit` (list and filter, oldest first, cursor by sequence) and `/api/v1/audit/verify`."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller
from litestar.params import QueryParameter

from controlplane.audit.errors import AuditQueryError, AuditUnavailable
from controlplane.audit.reader import AuditFilters, AuditPage, VerifyReport
from controlplane.audit.records import parse_time
from controlplane.audit.trail import AuditTrail
from controlplane.auth.guards import requires
from controlplane.policies.schemas import error_responses
from controlplane.routes import get
from controlplane.services import Services, ServicesDep


def trail_of(services: Services) -> AuditTrail:
    trail = getattr(services, "audit", None)
    if trail is None:
        raise AuditUnavailable("audit trail: not connected to NATS JetStream")
    return trail


def _time(name: str, value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise AuditQueryError(f"{name}: {exc}") from exc


class AuditApi(Controller):
    path = "/api/v1/audit"
    tags = ["audit"]
    guards = [requires("admin")]

    @get("", summary="Audit records, oldest first (page with after_seq) or newest first (newest_first, page with before_seq)",
         responses=error_responses(400, 401, 403, 429, 503))
    async def list_records(
        self,
        services: ServicesDep,
        decision: Annotated[str | None, QueryParameter(description="allow, deny, review, undefined or other")] = None,
        source: Annotated[str | None, QueryParameter(description="api, batch, nats or opa-agent")] = None,
        policy_id: Annotated[str | None, QueryParameter(description="records that consulted this rule id")] = None,
        evaluation_id: Annotated[str | None, QueryParameter(description="the record of one evaluation (a batch record holds several)")] = None,
        decision_id: Annotated[str | None, QueryParameter(description="an OPA agent's decision id")] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 or epoch seconds, inclusive")] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 or epoch seconds, inclusive")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        after_seq: Annotated[int, QueryParameter(ge=0, le=2**63 - 2, description="cursor: the next_after_seq of the previous page")] = 0,
        newest_first: Annotated[bool, QueryParameter(description="newest records first (the tail of the chain)")] = False,
        before_seq: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1, description="newest first: the next_before_seq of the previous page")] = None,
    ) -> AuditPage:
        filters = AuditFilters(
            decision=decision, source=source, policy_id=policy_id, evaluation_id=evaluation_id,
            decision_id=decision_id, since=_time("since", since), until=_time("until", until),
        )
        if newest_first or before_seq is not None:
            return await trail_of(services).list_newest(filters, limit=limit, before_seq=before_seq)
        return await trail_of(services).list(filters, limit=limit, after_seq=after_seq)

    @get("/verify", summary="Check the hash chain of the whole audit stream", responses=error_responses(401, 403, 429, 503))
    async def verify(self, services: ServicesDep) -> VerifyReport:
        return await trail_of(services).verify()
