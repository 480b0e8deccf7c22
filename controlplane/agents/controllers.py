"""OPA's decision-log and status APIs (`POST /logs`, `POST /status`), their read side, and a ready
agent configuration (`GET /api/v1/opa/config`).

Each handler receives the stores it uses by name from the app's dependencies (`controlplane.app`):
`decision_logs`, `statuses`, `audit_writer` (the audit trail's writer; None while the trail is not
started), `settings`, `signing_key`, `tokens`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias

import anyio.to_thread
from litestar import Controller, Request, Response
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter

from bridge.kernel.config import Settings
from bridge.kernel.untrusted import check_json_depth
from bridge.opabundle.keys import SigningKey
from controlplane.agents.config import AgentConfigOptions, render_agent_config, to_yaml
from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.payloads import decompress, read_body
from controlplane.agents.sharing import StatusSharing
from controlplane.agents.status import AgentSummary, StatusStore
from controlplane.agents.uploads import take_decision_logs
from controlplane.audit.controllers import started
from controlplane.audit.writer import TrailWriter
from controlplane.auth.guards import Principal, principal_of, requires
from controlplane.auth.tokens import TokenSet
from controlplane.impact.tap import AgentDecisions
from controlplane.routes import error_responses, get, post

_Seconds: TypeAlias = Annotated[int, QueryParameter(ge=1, le=3600)]


class AgentIngest(Controller):
    """What agents post. Both accept an optional partition suffix, as OPA's config allows."""

    tags = ["opa agents"]
    guards = [requires("agent")]

    @post(["/logs", "/logs/{partition:str}"], status_code=204, summary="OPA decision-log upload (gzip JSON array)",
          description="Each event is checked on its own: the good ones are stored, each refused one is audited "
                      "as `rejected` (decision id, SHA-256, reason); the batch is answered 204.",
          request_max_body_size=None, responses=error_responses(400, 401, 403, 413, 503))
    async def upload_logs(self, request: Request, settings: NamedDependency[Settings],
                          decision_logs: NamedDependency[DecisionLogStore], audit_writer: NamedDependency[TrailWriter | None],
                          bridge_token: NamedDependency[str], agent_decisions: NamedDependency[AgentDecisions],
                          partition: FromPath[str] = "") -> Response[None]:
        stored = await take_decision_logs(await read_body(request, settings.max_log_body_bytes),
                                          request.headers.get("content-encoding", ""), body_limit=settings.max_log_body_bytes,
                                          event_limit=settings.max_log_event_bytes, store=decision_logs,
                                          audit=started(audit_writer), bridge_token=bridge_token)
        agent_decisions([a.event for a in stored])  # the replay store: queued, published in the background
        return Response(content=None, status_code=204)

    @post(["/status", "/status/{partition:str}"], status_code=204, summary="OPA status report",
          request_max_body_size=None, responses=error_responses(400, 401, 403, 413, 503))
    async def upload_status(self, request: Request, settings: NamedDependency[Settings],
                            statuses: NamedDependency[StatusStore], status_sharing: NamedDependency[StatusSharing],
                            partition: FromPath[str] = "") -> Response[None]:
        limit = settings.max_status_bytes
        raw = decompress(await read_body(request, limit), request.headers.get("content-encoding", ""), limit)
        check_json_depth(raw, "status")  # a gzip body is only JSON once decompressed
        await anyio.to_thread.run_sync(statuses.record, raw)
        await status_sharing.share(raw)  # the deployment's other processes list it too
        return Response(content=None, status_code=204)


class AgentQueries(Controller):
    path = "/api/v1/opa"
    tags = ["opa agents"]
    guards = [requires("admin")]

    @get("/decisions", summary="Decision logs received from OPA agents, newest first")
    async def decisions(
        self,
        decision_logs: NamedDependency[DecisionLogStore],
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 100,
        decision_id: FromQuery[str | None] = None,
        path: FromQuery[str | None] = None,
        agent_id: FromQuery[str | None] = None,
    ) -> dict:
        events = decision_logs.query(limit=limit, decision_id=decision_id, path=path, agent_id=agent_id)
        return {"total": decision_logs.total, "count": len(events), "decisions": events}

    @get("/agents", summary="OPA agents and their bundles' last reported status")
    async def agents(self, statuses: NamedDependency[StatusStore]) -> list[AgentSummary]:
        return statuses.agents()

    @get("/agents/{agent_id:str}", summary="Latest full status report of one agent, with history")
    async def agent(self, statuses: NamedDependency[StatusStore], agent_id: FromPath[str],
                    history: FromQuery[bool] = False) -> dict:
        latest = statuses.latest(agent_id)
        if latest is None:
            raise NotFoundException(f"agent {agent_id!r}: no status received")
        out: dict = {"id": agent_id, "status": latest}
        if history:
            out["history"] = statuses.history(agent_id)
        return out


def _config_token(request: Request, tokens: TokenSet | None) -> Principal | None:
    """An agent asking gets its own token back; an admin gets the least-privileged agent token."""
    caller = principal_of(request)
    if caller is not None and caller.scopes == {"agent"}:
        return caller
    return tokens.agent_token() if tokens else None


class AgentSetup(Controller):
    """A ready agent configuration; an agent may fetch its own (no controller-wide admin guard)."""

    path = "/api/v1/opa"
    tags = ["bundles"]

    @get("/config", summary="A ready OPA agent configuration for this control plane (carries an agent token)",
         guards=[requires("admin", "agent")])
    async def agent_config(
        self,
        request: Request,
        settings: NamedDependency[Settings],
        signing_key: NamedDependency[SigningKey],
        tokens: NamedDependency[TokenSet | None],
        bundle: FromQuery[str] = "groqpolicy",
        agent_id: FromQuery[str] = "",
        format: Annotated[str, QueryParameter(pattern="^(yaml|json)$")] = "yaml",
        long_polling_timeout_s: _Seconds = 60,
        min_delay_s: _Seconds = 10,
        max_delay_s: _Seconds = 20,
        log_min_delay_s: _Seconds = 1,
        log_max_delay_s: _Seconds = 5,
        signing_scope: FromQuery[str] = "",
    ) -> Response[Any]:
        if min_delay_s > max_delay_s or log_min_delay_s > log_max_delay_s:
            raise ValidationException("min delay must not exceed max delay")
        token = _config_token(request, tokens)
        config = render_agent_config(
            base_url=settings.base_url,
            kid=signing_key.kid,
            algorithm=signing_key.alg,
            public_key_pem=signing_key.verification_key().public_pem,
            options=AgentConfigOptions(
                bundle=bundle, agent_id=agent_id, long_polling_timeout_s=long_polling_timeout_s,
                min_delay_s=min_delay_s, max_delay_s=max_delay_s, log_min_delay_s=log_min_delay_s,
                log_max_delay_s=log_max_delay_s, scope=signing_scope, token=token.secret if token else "",
            ),
        )
        if format == "json":
            return Response(content=config, media_type="application/json")
        return Response(content=to_yaml(config), media_type="application/yaml")
