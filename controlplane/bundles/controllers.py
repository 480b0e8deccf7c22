"""The bundles' HTTP side: OPA's bundle service (`BundleServer`) and its management API (`BundleApi`).

`GET /bundles/{name}` follows OPA's bundle service API (checked against opa v1.22.3's downloader):
the agent sends `If-None-Match` with its current ETag (and up to a few superseded ones,
comma-separated) and `Prefer: modes=snapshot,delta;wait=N` when long polling is configured. We answer
304 when nothing changed, holding the request up to N seconds and answering 200 the moment a new
revision is activated. A 200 must carry `Content-Type: application/vnd.openpolicyagent.bundles`, or
the agent falls back to periodic polling. A held request also ends when its client goes away (an
agent that stops or restarts): nobody is left to answer, and a server shutting down waits for every
request in flight.

`/api/v1/bundles...` and `/api/v1/opa/config` are the management side: active revisions, history,
publishing, and a ready agent configuration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeAlias

import anyio
from litestar import Controller, Request, Response
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter

from controlplane.agents.config import AgentConfigOptions, render_agent_config, to_yaml
from controlplane.auth.guards import Principal, principal_of, requires
from controlplane.bundles.revisions import TARGETS, Revision, RevisionStore
from controlplane.routes import get, post
from controlplane.services import Services, ServicesDep

BUNDLE_MEDIA_TYPE = "application/vnd.openpolicyagent.bundles"
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")
_Seconds: TypeAlias = Annotated[int, QueryParameter(ge=1, le=3600)]


def parse_wait(prefer: str | None) -> int | None:
    """Seconds from `Prefer: ...;wait=N`, or None when the client does not long-poll."""
    if not prefer:
        return None
    m = _WAIT.search(prefer)
    return int(m.group(1)) if m else None


def parse_if_none_match(header: str | None) -> set[str]:
    if not header:
        return set()
    return {tag.strip() for tag in header.split(",") if tag.strip()}


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (ASGI's `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _long_poll(request: Request, store: RevisionStore, name: str, target: str, known: Iterable[str],
                     timeout: float) -> bool:
    """`store.wait_for_change`, given up early when the client disconnects (then False)."""
    change = asyncio.create_task(store.wait_for_change(name, target, known, timeout))
    gone = asyncio.create_task(_client_gone(request))
    try:
        await asyncio.wait((change, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (change, gone):
            task.cancel()
    return change.done() and not change.cancelled() and change.result()


def _bundle_response(meta: Revision, archive: bytes) -> Response[bytes]:
    return Response(
        content=archive,
        media_type=BUNDLE_MEDIA_TYPE,
        headers={"ETag": meta.etag, "X-Groqpolicy-Revision": meta.revision, "Cache-Control": "no-cache"},
    )


class BundleServer(Controller):
    path = "/bundles"
    tags = ["bundles"]
    guards = [requires("agent")]

    @get("/{name:str}", summary="OPA bundle download (ETag, long polling)")
    async def download(self, request: Request, services: ServicesDep, name: FromPath[str],
                       target: FromQuery[str] = "rego") -> Response[bytes]:
        if target not in TARGETS:
            raise NotFoundException(f"target {target!r}: unknown (expected one of {', '.join(TARGETS)})")
        store = services.store
        known = parse_if_none_match(request.headers.get("if-none-match"))
        wait = parse_wait(request.headers.get("prefer"))
        active = store.get(name, target)
        unchanged = active is None or "*" in known or active[0].etag in known
        if unchanged and wait:
            timeout = min(wait, services.settings.long_poll_max_s)
            if await _long_poll(request, store, name, target, known, timeout):
                active = store.get(name, target)
                unchanged = active is None
        if active is None:
            raise NotFoundException(f"bundle {name!r}: no active revision")
        meta, archive = active
        if unchanged or meta.etag in known:
            return Response(content=b"", status_code=304, headers={"ETag": meta.etag})
        return _bundle_response(meta, archive)


def _config_token(request: Request, services: Services) -> Principal | None:
    """An agent asking gets its own token back; an admin gets the least-privileged agent token."""
    caller = principal_of(request)
    if caller is not None and caller.scopes == {"agent"}:
        return caller
    return services.tokens.agent_token() if services.tokens else None


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
    async def publish(self, services: ServicesDep, force: FromQuery[bool] = False) -> dict[str, Any]:
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
        long_polling_timeout_s: _Seconds = 60,
        min_delay_s: _Seconds = 10,
        max_delay_s: _Seconds = 20,
        log_min_delay_s: _Seconds = 1,
        log_max_delay_s: _Seconds = 5,
        signing_scope: FromQuery[str] = "",
    ) -> Response[Any]:
        if min_delay_s > max_delay_s or log_min_delay_s > log_max_delay_s:
            raise ValidationException("min delay must not exceed max delay")
        key = services.signing_key
        token = _config_token(request, services)
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
