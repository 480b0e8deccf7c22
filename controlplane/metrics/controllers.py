"""`GET /metrics` (Prometheus text format) and the middleware timing every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from litestar import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from controlplane.metrics.recorders import HTTP_LATENCY, REGISTRY, child
from controlplane.routes import get
from controlplane.services import Services, ServicesDep

TEXT_FORMAT = "text/plain; version=0.0.4"


class ServicesCollector:
    """Gauges derived at scrape time from what the control plane already holds."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        yield from self._bundles()
        yield from self._agents()
        yield from self._audit()

    def _bundles(self) -> Iterator[Metric]:
        store = self.services.store
        active = GaugeMetricFamily("groqpolicy_bundle_active_info", "Active bundle revision per bundle and target (value 1)",
                                   labels=["bundle", "target", "revision"])
        activated = GaugeMetricFamily("groqpolicy_bundle_activated_timestamp_seconds", "When the active revision was activated",
                                      labels=["bundle", "target"])
        revisions = GaugeMetricFamily("groqpolicy_bundle_revisions", "Revisions kept in history per bundle", labels=["bundle"])
        bundles = list(store.bundles())
        for r in bundles:
            active.add_metric([r.bundle, r.target, r.revision], 1)
            activated.add_metric([r.bundle, r.target], r.activated_at)
        for name in sorted({r.bundle for r in bundles}):
            revisions.add_metric([name], len({h.revision for h in store.history(name)}))
        yield active
        yield activated
        yield revisions

    def _agents(self) -> Iterator[Metric]:
        agents = self.services.statuses.agents()
        seen = GaugeMetricFamily("groqpolicy_agent_last_seen_timestamp_seconds", "Last status report per OPA agent", labels=["agent"])
        reports = CounterMetricFamily("groqpolicy_agent_status_reports", "Status reports received per OPA agent", labels=["agent"])
        bundle_ok = GaugeMetricFamily(
            "groqpolicy_agent_bundle_ok", "1 when the agent reports its bundle activated without error, else 0",
            labels=["agent", "bundle", "revision"],
        )
        for a in agents:
            seen.add_metric([a.id], a.last_seen)
            reports.add_metric([a.id], a.reports)
            for b in a.bundles:
                bundle_ok.add_metric([a.id, b.name, b.active_revision], 0 if (b.code or b.errors) else 1)
        yield seen
        yield reports
        yield bundle_ok
        yield GaugeMetricFamily("groqpolicy_agents", "OPA agents that reported status", value=len(agents))
        logs = CounterMetricFamily("groqpolicy_decision_logs", "Decision-log events received from OPA agents")
        logs.add_metric([], self.services.decision_logs.total)
        yield logs

    def _audit(self) -> Iterator[Metric]:
        trail = self.services.audit
        if trail is not None:
            conflicts = CounterMetricFamily("groqpolicy_audit_append_conflicts",
                                            "Appends that lost the race to another replica and relinked (expected-last-sequence)")
            conflicts.add_metric([], trail.conflicts)
            yield conflicts


def render(services: Services) -> bytes:
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ServicesCollector(services))
    return generate_latest(REGISTRY) + generate_latest(scrape)


@get("/metrics", tags=["ops"], summary="Prometheus metrics", opt={"public": True}, include_in_schema=True)
async def metrics(services: ServicesDep) -> Response[bytes]:
    # the classic text exposition format (what generate_latest writes); Litestar appends the charset
    return Response(content=render(services), media_type=TEXT_FORMAT)


def timing_middleware(app: Any) -> Any:
    """Observe each HTTP request's latency under its route template (bounded label values)."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or "unmatched"
            child(HTTP_LATENCY, route, scope.get("method", ""), str(status)).observe(time.perf_counter() - start)

    return middleware
