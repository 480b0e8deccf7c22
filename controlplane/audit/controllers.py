"""`GET /api/v1/audit` (list and filter, oldest first, cursor by sequence) and `/api/v1/audit/verify`.

Both read through `audit_reader`, the trail's reader, from the app's dependencies
(`controlplane.app`): None while the trail is not started, which `started` turns into 503 once
the request itself has been checked (a malformed query is a 400 either way).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from litestar import Controller
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from controlplane.audit.errors import AuditQueryError, AuditUnavailable
from controlplane.audit.reader import AuditFilters, AuditPage, TrailReader, VerifyReport
from controlplane.audit.records import parse_time
from controlplane.auth.guards import requires
from controlplane.routes import error_responses, get

T = TypeVar("T")


def started(part: T | None) -> T:
    """The trail's reader or writer, or AuditUnavailable (503) while the trail is not started."""
    if part is None:
        raise AuditUnavailable("audit trail: not connected to NATS JetStream")
    return part


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
        audit_reader: NamedDependency[TrailReader | None],
        decision: Annotated[str | None, QueryParameter(description="allow, deny, review, undefined or other")] = None,
        source: Annotated[str | None, QueryParameter(description="api, batch, nats, opa-agent, admin or certification")] = None,
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
            return await started(audit_reader).list_newest(filters, limit=limit, before_seq=before_seq)
        return await started(audit_reader).list(filters, limit=limit, after_seq=after_seq)

    @get("/verify", summary="Check the hash chain of the whole audit stream", responses=error_responses(401, 403, 429, 503))
    async def verify(self, audit_reader: NamedDependency[TrailReader | None]) -> VerifyReport:
        return await started(audit_reader).verify()
