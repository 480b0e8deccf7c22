"""The inference worker as a `nats.micro` service: one endpoint per tier on `groq.infer.<tier>`,
all in one queue group so any number of workers share the load ($SRV.PING/INFO/STATS work).

The handler answers L1 hits inline (microseconds) and spawns a task for everything else
(`bridge.inference.micro.TaskService`): a slow model call never blocks the endpoint. Replies carry
`Groqpolicy-Max-Age`; errors are nats.micro error replies with the HTTP status as the code and the
family's JSON error body, which the gateway passes through unchanged.

Where model calls go is decided once, at start (`groq_endpoint`): GroqCloud when `GROQ_API_KEY` is
set, else the emulator at `GROQPOLICY_EMULATOR_URL` (which `groqpolicy up` starts when there is
no key); with neither the worker refuses to start.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import groq
import httpx
from nats.aio.client import Client as NatsClient
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, ServiceConfig

from bridge.inference.cache import KVCache
from bridge.inference.catalog import Catalog, default_catalog
from bridge.inference.connect import connect
from bridge.inference.micro import Handler, TaskService, respond_error
from bridge.inference.natsclient import drain_or_close
from bridge.inference.wire import (
    MAX_AGE_HEADER,
    WORKER_SERVICE,
    InferRequest,
    InternalError,
    NoWorker,
    encode,
    header_budget_ms,
    read_request,
    subject_for,
)
from bridge.inference.worker.engine import InferenceEngine
from bridge.kernel.config import DEFAULT_DEADLINE_MS, EngineSettings, GroqSettings, NatsSettings
from bridge.kernel.errors import ConfigError, GroqPolicyError
from bridge.kernel.vocabulary import ROUTABLE_TIERS

log = logging.getLogger("groqpolicy.worker")
SERVICE_NAME = WORKER_SERVICE
SERVICE_VERSION = "0.1.0"
QUEUE_GROUP = "groq-infer"
EMULATED_KEY = "emulated"  # what the SDK sends as its key to an emulator, which checks none unless told to


def deadline_margin_s(budget_s: float) -> float:
    """Time kept back so that the worker's own answer (even a 504) reaches the gateway in time."""
    return min(0.05, budget_s * 0.1)


@dataclass(frozen=True)
class GroqEndpoint:
    base_url: str
    api_key: str
    emulated: bool


def groq_endpoint(settings: GroqSettings) -> GroqEndpoint:
    """Where model calls go: GroqCloud with a key, else the emulator named by URL; neither is an error."""
    if settings.api_key:
        return GroqEndpoint(settings.base_url, settings.api_key, emulated=False)
    if settings.emulator_url:
        return GroqEndpoint(settings.emulator_url, EMULATED_KEY, emulated=True)
    raise ConfigError("no model endpoint: set GROQ_API_KEY (GroqCloud) or GROQPOLICY_EMULATOR_URL "
                      "(a Groq emulator, e.g. `python -m bridge.emulator`)")


@dataclass
class GroqConnection:
    client: groq.AsyncGroq
    emulated: bool
    base_url: str

    async def close(self) -> None:
        await self.client.close()


async def connect_groq(settings: GroqSettings | None = None) -> GroqConnection:
    """One pooled AsyncGroq client, warmed (the pool holds an open connection when this returns).
    Every reply of an emulated connection says `emulated: true`."""
    endpoint = groq_endpoint(settings or GroqSettings.from_env())
    if endpoint.emulated:
        log.warning("GROQ_API_KEY is not set: answering from the Groq EMULATOR at %s; every reply says emulated=true",
                    endpoint.base_url)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=60),
                             timeout=httpx.Timeout(30.0, connect=5.0))
    client = groq.AsyncGroq(api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0, http_client=http)
    try:
        await client.models.list(timeout=10)
    except groq.APIError as exc:
        log.warning("Groq warm-up (GET /openai/v1/models) failed: %s", exc)
    return GroqConnection(client=client, emulated=endpoint.emulated, base_url=endpoint.base_url)


class Worker:
    def __init__(self, nc: NatsClient, engine: InferenceEngine, *, queue_group: str = QUEUE_GROUP,
                 name: str = SERVICE_NAME, owns_nc: bool = False) -> None:
        self.nc = nc
        self.owns_nc = owns_nc
        self.engine = engine
        self.max_inflight = engine.settings.max_inflight
        """Beyond this many uncached requests in progress the worker answers 503 at once: the caller
        (or the Rego helper, as review) learns in microseconds instead of at its deadline."""
        self.rejected = 0
        self.served = 0
        config = ServiceConfig(name=name, version=SERVICE_VERSION, queue_group=queue_group,
                               description="groqpolicy: tiered Groq judgments for OPA policies",
                               metadata={"emulated": str(engine.emulated).lower()}, stats_handler=self._endpoint_stats)
        endpoints = [EndpointConfig(name=tier, subject=subject_for(tier), handler=self._handler(tier),
                                    metadata={"tier": tier}) for tier in ROUTABLE_TIERS]
        self.micro = TaskService(nc, config, endpoints)

    async def start(self) -> Worker:
        await self.micro.start()
        return self

    async def stop(self) -> None:
        await self.micro.stop()

    def _endpoint_stats(self, endpoint: EndpointStats) -> dict[str, Any]:
        # answers come from tasks, so micro's own processing time and error counts see only the
        # hand-off: the engine's counters say what happened
        return {**self.engine.stats(), "served": self.served, "rejected": self.rejected,
                "in_progress": self.micro.in_progress}

    def _handler(self, tier: str) -> Handler:
        engine = self.engine

        async def handle(request: Request) -> None:
            started = time.perf_counter()
            try:
                req = read_request(request.data, label="request")
            except GroqPolicyError as exc:
                await self._respond_error(request, exc)
                return
            hit = engine.lookup_l1(tier, req, started)
            if hit is not None:
                self.served += 1
                await request.respond(encode(hit[0]), headers={MAX_AGE_HEADER: str(hit[1])})
                return
            if self.micro.in_progress >= self.max_inflight:
                self.rejected += 1
                await self._respond_error(request, NoWorker(
                    f"worker overloaded: {self.micro.in_progress} requests in progress (max {self.max_inflight})",
                    code="overloaded"))
                return
            self.micro.spawn(self._serve(tier, req, request, started))

        return handle

    async def _serve(self, tier: str, req: InferRequest, request: Request, started: float) -> None:
        budget_s = _budget_ms(request, req) / 1000
        deadline = time.monotonic() + budget_s - deadline_margin_s(budget_s)
        try:
            reply, max_age = await self.engine.infer(tier, req, deadline, started, skip_l1=True)
        except GroqPolicyError as exc:
            await self._respond_error(request, exc)
            return
        except Exception as exc:
            log.exception("tier %s: unexpected error", tier)
            await self._respond_error(request, InternalError(f"worker error: {exc!r}"))
            return
        self.served += 1
        try:
            await request.respond(encode(reply), headers={MAX_AGE_HEADER: str(max_age)})
        except Exception:  # noqa: BLE001 - connection gone; the caller will time out and retry
            log.warning("tier %s: could not deliver a reply", tier)

    async def _respond_error(self, request: Request, err: GroqPolicyError) -> None:
        self.engine.counters.errors += 1
        try:
            await respond_error(request, err)
        except Exception:  # noqa: BLE001 - connection gone; the caller will time out and retry
            log.warning("could not deliver an error reply")


def _budget_ms(request: Request, req: InferRequest) -> int:
    """The caller's budget: the gateway's header, else the request's own deadline, else the default."""
    return header_budget_ms(request.headers) or req.deadline_ms or DEFAULT_DEADLINE_MS


async def start_worker(nats_url: str | None = None, *, nc: NatsClient | None = None,
                       groq_conn: GroqConnection | None = None, catalog: Catalog | None = None,
                       settings: EngineSettings | None = None, l2: bool = True,
                       queue_group: str = QUEUE_GROUP, credential: NatsSettings | None = None,
                       ) -> tuple[Worker, GroqConnection, NatsClient]:
    """Connect (NATS, Groq), open the L2 bucket, and start serving. Returns what `stop_worker` needs.
    Without `groq_conn` the model endpoint comes from `GroqSettings` (a ConfigError when there is none).
    NATS is joined as the `worker` role with `credential` (default: the environment's); a refused
    credential or an unreachable server raises at once (bridge.inference.connect)."""
    own_nc = nc is None
    if groq_conn is None:
        groq_conn = await connect_groq()
    if nc is None:
        # a NATS restart should cost the queue group a fraction of a second, not nats-py's default 2 s
        nc = await connect(nats_url or GroqSettings.from_env().nats_url, role="worker", settings=credential,
                           reconnect_time_wait=0.25)
    kv = await KVCache.open(nc.jetstream()) if l2 else None
    engine = InferenceEngine(groq_conn.client, catalog or default_catalog(), emulated=groq_conn.emulated,
                             settings=settings, l2=kv)
    worker = await Worker(nc, engine, queue_group=queue_group, owns_nc=own_nc).start()
    return worker, groq_conn, nc


async def stop_worker(worker: Worker, groq_conn: GroqConnection | None = None, nc: NatsClient | None = None) -> None:
    await worker.stop()
    await worker.engine.pool.close()
    if groq_conn is not None:
        await groq_conn.close()
    if nc is not None and worker.owns_nc:
        await drain_or_close(nc)


__all__ = ["GroqConnection", "GroqEndpoint", "Worker", "connect_groq", "groq_endpoint", "start_worker", "stop_worker"]
