"""OPA's decision-log and status APIs (`POST /logs`, `POST /status`) and their read side."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, QueryParameter

from controlplane.agents.payloads import decode_json, decompress
from controlplane.agents.status import AgentSummary
from controlplane.audit.controllers import trail_of
from controlplane.audit.ingest import audit_decision_log_events
from controlplane.auth.guards import requires
from controlplane.routes import get, post
from controlplane.services import ServicesDep


class AgentIngest(Controller):
    """What agents post. Both accept an optional partition suffix, as OPA's config allows."""

    tags = ["opa agents"]
    guards = [requires("agent")]

    @post(["/logs", "/logs/{partition:str}"], status_code=204, summary="OPA decision-log upload (gzip JSON array)")
    async def upload_logs(self, request: Request, services: ServicesDep, partition: FromPath[str] = "") -> Response[None]:
        raw = decompress(await request.body(), request.headers.get("content-encoding", ""), services.settings.max_log_body_bytes)
        events = services.decision_logs.validate(decode_json(raw, "decision log batch"))
        # audit first: if JetStream does not acknowledge, the agent gets 503 and uploads the batch again
        # (nothing stored yet); a re-upload of audited events is recognised by their record ids
        await audit_decision_log_events(trail_of(services), events)
        services.decision_logs.append(events)
        return Response(content=None, status_code=204)

    @post(["/status", "/status/{partition:str}"], status_code=204, summary="OPA status report")
    async def upload_status(self, request: Request, services: ServicesDep, partition: FromPath[str] = "") -> Response[None]:
        raw = decompress(await request.body(), request.headers.get("content-encoding", ""), services.settings.max_log_body_bytes)
        services.statuses.record(decode_json(raw, "status"))
        return Response(content=None, status_code=204)


class AgentQueries(Controller):
    path = "/api/v1/opa"
    tags = ["opa agents"]
    guards = [requires("admin")]

    @get("/decisions", summary="Decision logs received from OPA agents, newest first")
    async def decisions(
        self,
        services: ServicesDep,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
        decision_id: FromQuery[str | None] = None,
        path: FromQuery[str | None] = None,
        agent_id: FromQuery[str | None] = None,
    ) -> dict:
        events = services.decision_logs.query(limit=limit, decision_id=decision_id, path=path, agent_id=agent_id)
        return {"total": services.decision_logs.total, "count": len(events), "decisions": events}

    @get("/agents", summary="OPA agents and their bundles' last reported status")
    async def agents(self, services: ServicesDep) -> list[AgentSummary]:
        return services.statuses.agents()

    @get("/agents/{agent_id:str}", summary="Latest full status report of one agent, with history")
    async def agent(self, services: ServicesDep, agent_id: FromPath[str], history: FromQuery[bool] = False) -> dict:
        latest = services.statuses.latest(agent_id)
        if latest is None:
            raise NotFoundException(f"agent {agent_id!r}: no status received")
        out: dict = {"id": agent_id, "status": latest}
        if history:
            out["history"] = services.statuses.history(agent_id)
        return out
