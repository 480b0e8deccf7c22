"""The Litestar control plane (:8015): wiring only; features live in their own packages, and the
objects they run on are built by the composition root (`controlplane.services`).

Handlers receive each object they use by parameter name (`dependencies`): no handler sees the
whole `Services`. The guards, which run before dependencies are resolved, find the token set in
the app's state.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from bridge.opawasm import WasmEvaluator
from controlplane.agents.controllers import AgentIngest, AgentQueries, AgentSetup
from controlplane.audit import TrailReader, TrailWriter
from controlplane.audit.controllers import AuditApi
from controlplane.auth.guards import STATE_KEY, check_routes
from controlplane.auth.ratelimit import rate_limit_config
from controlplane.bundles.controllers import BundleApi, BundleServer
from controlplane.bundles.revisions import RevisionStore
from controlplane.dashboard import DashboardController, dashboard_templates
from controlplane.evaljobs.controllers import EvaluationJobs
from controlplane.evaluation.controllers import EvaluationController, GroqController, OpaController
from controlplane.impact.controllers import ImpactApi
from controlplane.infra.edge import EXCEPTION_HANDLERS, LimitedRequest, request_id_middleware
from controlplane.infra.health import degraded
from controlplane.infra.nats import NatsConnection
from controlplane.infra.supervision import read_status
from controlplane.metrics.controllers import metrics, timing_middleware
from controlplane.policies.controllers import PolicyController
from controlplane.routes import get
from controlplane.services import Lifecycle, Services, Step

log = logging.getLogger(__name__)
# what a served control plane prints once its start-up is complete: the supervisor's readiness
# probe (several processes share one socket, so a probe on the port cannot tell which one answered)
CONTROL_PLANE_READY = "groqpolicy control plane ready"


@get("/health", tags=["ops"], summary="Liveness and what is loaded", opt={"public": True})
async def health(revisions: NamedDependency[RevisionStore], errors: NamedDependency[list[str]],
                 nats: NamedDependency[NatsConnection], settings: NamedDependency[Settings],
                 evaluator: NamedDependency[WasmEvaluator], audit_writer: NamedDependency[TrailWriter | None]) -> dict:
    supervisor = read_status(settings.state_dir)  # `groqpolicy up`'s view of its children, if it runs us
    waited = audit_writer.backlog_wait_s() if audit_writer is not None else 0.0
    return {
        "status": "degraded" if degraded(errors, nats.connected, waited, supervisor) else "ok",
        "constitutional_hash": CONSTITUTIONAL_HASH,
        "bundles": [f"{r.bundle}/{r.target}@{r.revision}" for r in revisions.bundles()],
        "errors": errors,  # start-up publishing, stored policies, wasm loads
        "nats": nats.connected,
        "audit": {"waiting": audit_writer.backlog if audit_writer is not None else 0, "oldest_waiting_s": round(waited, 1)},
        # this process's in-process evaluator; "baseline": a new revision served on Winch's code
        # while its serving compile runs behind it (bridge.opawasm.evaluator)
        "evaluator": {"revision": evaluator.revision, "code": "baseline" if evaluator.on_baseline else "optimized"},
        "process": os.getpid(),  # which of the processes sharing the port answered (`GROQPOLICY_PROCESSES`)
        **({"supervisor": msgspec.to_builtins(supervisor)} if supervisor is not None else {}),
    }


def _once(value: Any) -> Provide:
    """A dependency that is one object for the app's whole life (resolved once, then cached)."""
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)


def _per_request(read: Callable[[], Any]) -> Provide:
    """A dependency read again for every request that asks for it (it changes while the app runs)."""
    return Provide(read, sync_to_thread=False)


def dependencies(services: Services) -> dict[str, Provide]:
    """What handlers receive by parameter name: each takes the objects it uses, never `services`."""
    rt = services.runtime
    once = {
        "settings": services.settings, "tokens": services.tokens, "signing_key": services.signing_key,
        "nats": services.nats, "revisions": services.store, "publish_library": services.publish_definitions,
        "statuses": services.statuses, "decision_logs": services.decision_logs, "policies": services.policies,
        "pipeline": rt.pipeline, "evaluator": rt.evaluator, "model_client": rt.models, "catalog": rt.catalog,
        "gauges": services.gauges, "startup_errors": services.startup_errors, "bridge_token": services.bridge_token,
        "signin_codes": services.signin_codes,
        "impact": services.impact, "shadows": services.shadows, "agent_decisions": services.agent_decisions,
        "replay": services.replay, "evaljobs": services.evaljobs, "status_sharing": services.status_sharing,
    }
    recorder = services.recorder

    def audit_reader() -> TrailReader | None:  # the trail exists once started (None without NATS)
        return recorder.trail.reader if recorder.trail is not None else None

    def audit_writer() -> TrailWriter | None:
        return recorder.trail.writer if recorder.trail is not None else None

    per_request = {"errors": lambda: services.errors, "audit_reader": audit_reader, "audit_writer": audit_writer}
    return {**{name: _once(value) for name, value in once.items()},
            **{name: _per_request(read) for name, read in per_request.items()}}


def create_app(settings: Settings | None = None, services: Services | None = None, *, freeze_heap: bool = False) -> Litestar:
    """The control plane. `freeze_heap` (for a process that serves only this app): once started,
    move every object alive (modules, app, compiled policies) out of the garbage collector's
    generations (`gc.freeze`), so the collections that request handling triggers stop walking
    them; on a batch of evaluations that is a large part of the time spent; and say on stderr
    when the start-up is complete (`CONTROL_PLANE_READY`)."""
    settings = settings or Settings.from_env()
    services = services or Services.build(settings)

    async def freeze_startup_heap() -> None:
        if freeze_heap:
            gc.collect()
            gc.freeze()
            print(f"{CONTROL_PLANE_READY} (pid {os.getpid()})", file=sys.stderr, flush=True)

    lifecycle = Lifecycle([*services.components(), ("heap", Step(freeze_startup_heap))])

    # outermost first: a request id on everything, time everything (429s included), then limit per client
    middleware: list = [request_id_middleware, timing_middleware]
    limits = rate_limit_config(settings.rate_limit)
    if limits is not None:
        middleware.append(limits.middleware)

    app = Litestar(
        route_handlers=[health, metrics, BundleServer, BundleApi, AgentIngest, AgentQueries, AgentSetup,
                        PolicyController, EvaluationController, GroqController, OpaController, AuditApi,
                        ImpactApi, EvaluationJobs, DashboardController],
        middleware=middleware,
        dependencies=dependencies(services),
        exception_handlers=EXCEPTION_HANDLERS,  # the one mapping of errors to HTTP (controlplane.infra.edge)
        request_class=LimitedRequest,  # bodies held to the JSON nesting limit
        on_startup=[lifecycle.start],
        on_shutdown=[lifecycle.stop],
        template_config=dashboard_templates(),  # the dashboard at / (controlplane.dashboard)
        openapi_config=OpenAPIConfig(title="groqpolicy control plane", version="0.1.0", path="/schema"),
        state=State({STATE_KEY: services.tokens}),  # for the guards (controlplane.auth.guards)
        debug=False,
    )
    check_routes(app)  # every route declares a scope or is public, or the app does not start
    return app
