"""`GET /metrics` (Prometheus text format) and the middleware timing every HTTP request."""

from __future__ import annotations

import time
from typing import Any

from litestar import Response
from litestar.di import NamedDependency
from prometheus_client import CollectorRegistry, generate_latest

from controlplane.metrics.gauges import StoreGauges
from controlplane.metrics.recorders import HTTP_LATENCY, REGISTRY, child
from controlplane.routes import get

TEXT_FORMAT = "text/plain; version=0.0.4"


def render(gauges: StoreGauges) -> bytes:
    """The process-wide metrics, then this app's gauges (read now)."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(gauges)
    return generate_latest(REGISTRY) + generate_latest(scrape)


@get("/metrics", tags=["ops"], summary="Prometheus metrics", opt={"public": True}, include_in_schema=True)
async def metrics(gauges: NamedDependency[StoreGauges]) -> Response[bytes]:
    # the classic text exposition format (what generate_latest writes); Litestar appends the charset
    return Response(content=render(gauges), media_type=TEXT_FORMAT)


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
