"""Management side of bundles: active revisions, history, agent configuration, publishing."""

from __future__ import annotations

from typing import Annotated

import anyio
from litestar import Controller, Request, Response
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter

from controlplane.agents.config import AgentConfigOptions, render_agent_config, to_yaml
from controlplane.auth.guards import principal_of, requires
from controlplane.bundles.revisions import Revision
from controlplane.routes import get, post
from controlplane.services import ServicesDep


class BundleApi(Controller):
    path = "/api/v1"
    tags = ["bundles"]

    @get("/bundles", summary="Active bundle revisions", guards=[requires("admin")])
    async def list_bundles(self, services: ServicesDep) -> list[Revision]:
        return services.store.bundles()

    @get("/bundles/{name:str}/revisions", summary="Recent revisions of one bundle", guards=[requires("admin")])
    async def revisions(self, services: ServicesDep, name: FromPath[str]) -> list[Revision]:
        history = services.store.history(name)
        if not history:
            raise NotFoundException(f"bundle {name!r}: unknown")
        return history

    @post("/bundles/publish", summary="Recompile bundles/ definitions and activate changed ones", status_code=200,
          guards=[requires("admin")])
    async def publish(self, services: ServicesDep, force: FromQuery[bool] = False) -> dict:
        published = await anyio.to_thread.run_sync(lambda: services.publish_definitions(force=force))
        return {"published": published, "bundles": services.store.bundles()}

    @get("/opa/config", summary="A ready OPA agent configuration for this control plane (carries an agent token)",
         guards=[requires("admin", "agent")])
    async def agent_config(
        self,
        request: Request,
        services: ServicesDep,
        bundle: FromQuery[str] = "groqpolicy",
        agent_id: FromQuery[str] = "",
        format: Annotated[str, QueryParameter(pattern="^(yaml|json)$")] = "yaml",
        long_polling_timeout_s: Annotated[int, QueryParameter(ge=1, le=3600)] = 60,
        min_delay_s: Annotated[int, QueryParameter(ge=1, le=3600)] = 10,
        max_delay_s: Annotated[int, QueryParameter(ge=1, le=3600)] = 20,
        log_min_delay_s: Annotated[int, QueryParameter(ge=1, le=3600)] = 1,
        log_max_delay_s: Annotated[int, QueryParameter(ge=1, le=3600)] = 5,
        signing_scope: FromQuery[str] = "",
    ) -> Response:
        if min_delay_s > max_delay_s or log_min_delay_s > log_max_delay_s:
            raise ValidationException("min delay must not exceed max delay")
        key = services.signing_key
        # an agent asking gets its own token back; an admin gets the least-privileged agent token
        caller = principal_of(request)
        token = caller if caller is not None and caller.scopes == {"agent"} else (services.tokens.agent_token() if services.tokens else None)
        config = render_agent_config(
            base_url=services.settings.base_url,
            kid=key.kid,
            algorithm=key.alg,
            public_key_pem=key.verification_key().public_pem,
            options=AgentConfigOptions(
                bundle=bundle, agent_id=agent_id, long_polling_timeout_s=long_polling_timeout_s,
                min_delay_s=min_delay_s, max_delay_s=max_delay_s, log_min_delay_s=log_min_delay_s,
                log_max_delay_s=log_max_delay_s, scope=signing_scope, token=token.secret if token else "",
            ),
        )
        if format == "json":
            return Response(content=config, media_type="application/json")
        return Response(content=to_yaml(config), media_type="application/yaml")
