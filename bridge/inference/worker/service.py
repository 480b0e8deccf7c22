"""The inference worker as a `nats.micro` service: one endpoint per tier on `groq.infer.<tier>`,
all in one queue group so any number of workers share the load ($SRV.PING/INFO/STATS work).

nats-py runs a subscription's callback one message at a time, so the handler answers L1 hits
inline (microseconds) and hands everything else to a task: a slow model call never blocks the
endpoint. Replies carry `Groqpolicy-Max-Age`; errors carry nats.micro's error headers with the
HTTP status as the code and a JSON error body, which the gateway passes through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import groq
import httpx
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from bridge.inference.cache import KVCache
from bridge.inference.catalog import Catalog, default_catalog
from bridge.inference.wire import (
    BUDGET_HEADER,
    DEFAULT_DEADLINE_MS,
    MAX_AGE_HEADER,
    MAX_DEADLINE_MS,
    InvalidInferRequest,
    NoWorker,
    decode_request,
    encode,
    subject_for,
    validate_request,
)
from bridge.inference.worker.engine import EngineSettings, InferenceEngine
from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import GroqPolicyError, error_body, error_description
from bridge.kernel.vocabulary import TIERS

log = logging.getLogger("groqpolicy.worker")
SERVICE_NAME = "groqpolicy-inference"
SERVICE_VERSION = "0.1.0"
QUEUE_GROUP = "groq-infer"


def deadline_margin_s(budget_s: float) -> float:
    """Time kept back so that the worker's own answer (even a 504) reaches the gateway in time."""
    return min(0.05, budget_s * 0.1)


@dataclass
class GroqConnection:
    client: groq.AsyncGroq
    emulated: bool
    base_url: str
    emulator: object | None = None  # a LoopServer when we started the emulator ourselves

    async def close(self) -> None:
        await self.client.close()
        if self.emulator is not None:
            await self.emulator.stop()  # type: ignore[attr-defined]


async def connect_groq(*, base_url: str | None = None, api_key: str | None = None, emulated: bool | None = None) -> GroqConnection:
    """One pooled AsyncGroq client, warmed (the pool holds an open connection when this returns).

    Resolution: explicit arguments; else `GROQ_API_KEY` (+ optional `GROQ_BASE_URL`) = the real API;
    else `GROQPOLICY_EMULATOR_URL` = an emulator running elsewhere; else an emulator started here.
    Every reply of an emulated connection says `emulated: true`.
    """
    emulator = None
    if base_url is None:
        groq_settings = GroqSettings.from_env()
        if api_key is None and groq_settings.api_key:
            api_key = groq_settings.api_key
            base_url = groq_settings.base_url
            emulated = False if emulated is None else emulated
        elif groq_settings.emulator_url:
            base_url = groq_settings.emulator_url
            emulated = True
        else:
            from bridge.emulator import create_app
            from bridge.inference.serving import LoopServer

            emulator = await LoopServer(create_app()).start()
            base_url = emulator.url
            emulated = True
    if emulated is None:
        emulated = api_key is None
    if emulated:
        log.warning("GROQ_API_KEY is not set: answering from the Groq EMULATOR at %s; every reply says emulated=true", base_url)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=60),
                             timeout=httpx.Timeout(30.0, connect=5.0))
    client = groq.AsyncGroq(api_key=api_key or "emulated", base_url=base_url, max_retries=0, http_client=http)
    try:
        await client.models.list(timeout=10)
    except groq.APIError as exc:
        log.warning("Groq warm-up (GET /openai/v1/models) failed: %s", exc)
    return GroqConnection(client=client, emulated=emulated, base_url=base_url, emulator=emulator)


class Worker:
    def __init__(self, nc: NATS, engine: InferenceEngine, *, queue_group: str = QUEUE_GROUP, name: str = SERVICE_NAME,
                 owns_nc: bool = False, max_inflight: int | None = None) -> None:
        self.nc = nc
        self.owns_nc = owns_nc
        self.max_inflight = max_inflight or engine.settings.max_inflight
        """Beyond this many uncached requests in progress the worker answers 503 at once: the caller
        (or the Rego helper, as review) learns in microseconds instead of at its deadline."""
        self.rejected = 0
        self.engine = engine
        self.queue_group = queue_group
        self.name = name
        self.service: Service | None = None
        self._tasks: set[asyncio.Task] = set()
        self.served = 0

    async def start(self) -> Worker:
        self.service = await add_service(
            self.nc, name=self.name, version=SERVICE_VERSION, queue_group=self.queue_group,
            description="groqpolicy: tiered Groq judgments for OPA policies",
            metadata={"emulated": str(self.engine.emulated).lower()},
            stats_handler=self._endpoint_stats,
        )
        for tier in TIERS:
            await self.service.add_endpoint(name=tier, subject=subject_for(tier), handler=self._handler(tier),
                                            metadata={"tier": tier})
        await self.nc.flush()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _endpoint_stats(self, endpoint: EndpointStats) -> dict:
        return {**self.engine.stats(), "served": self.served, "rejected": self.rejected, "in_progress": len(self._tasks)}

    def _handler(self, tier: str):
        engine = self.engine

        async def handle(request: Request) -> None:
            started = time.perf_counter()
            try:
                req = decode_request(request.data)
                validate_request(req)
            except (msgspec.DecodeError, msgspec.ValidationError, GroqPolicyError) as exc:
                err: GroqPolicyError
                if isinstance(exc, GroqPolicyError):
                    err = exc
                elif isinstance(exc, msgspec.ValidationError):  # a subclass of DecodeError: test it first
                    err = InvalidInferRequest(f"request: {exc}", status=422, code="invalid_request")
                else:
                    err = InvalidInferRequest(f"request: not JSON ({exc})", status=400, code="invalid_json")
                await self._respond_error(request, err)
                return
            hit = engine.lookup_l1(tier, req, started)
            if hit is not None:
                self.served += 1
                await request.respond(encode(hit[0]), headers={MAX_AGE_HEADER: str(hit[1])})
                return
            if len(self._tasks) >= self.max_inflight:
                self.rejected += 1
                await self._respond_error(request, NoWorker(
                    f"worker overloaded: {len(self._tasks)} requests in progress (max {self.max_inflight})", code="overloaded"))
                return
            t = asyncio.create_task(self._serve(tier, req, request, started))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        return handle

    async def _serve(self, tier: str, req, request: Request, started: float) -> None:
        budget_ms = self._budget_ms(request, req)
        budget_s = budget_ms / 1000
        deadline = time.monotonic() + budget_s - deadline_margin_s(budget_s)
        try:
            reply, max_age = await self.engine.infer(tier, req, deadline, started, skip_l1=True)
        except GroqPolicyError as exc:
            await self._respond_error(request, exc)
            return
        except Exception as exc:
            log.exception("tier %s: unexpected error", tier)
            await self._respond_error(request, GroqPolicyError(f"worker error: {exc!r}", type_="internal_error",
                                                               code="internal_error"))
            return
        self.served += 1
        try:
            await request.respond(encode(reply), headers={MAX_AGE_HEADER: str(max_age)})
        except Exception:  # noqa: BLE001 - connection gone; the caller will time out and retry
            log.warning("tier %s: could not deliver a reply", tier)

    @staticmethod
    def _budget_ms(request: Request, req) -> int:
        raw = (request.headers or {}).get(BUDGET_HEADER)
        if raw:
            try:
                return max(1, min(int(float(raw)), MAX_DEADLINE_MS))
            except ValueError:
                pass
        return req.deadline_ms or DEFAULT_DEADLINE_MS

    async def _respond_error(self, request: Request, err: GroqPolicyError) -> None:
        self.engine.counters.errors += 1
        try:
            # nats.micro's error reply: the status in Nats-Service-Error-Code, the body as over HTTP
            await request.respond_error(str(err.status), error_description(err.message), data=error_body(err))
        except Exception:  # noqa: BLE001
            log.warning("could not deliver an error reply")


async def start_worker(nats_url: str | None = None, *, nc: NATS | None = None, groq_conn: GroqConnection | None = None,
                       catalog: Catalog | None = None, settings: EngineSettings | None = None, l2: bool = True,
                       queue_group: str = QUEUE_GROUP, max_inflight: int | None = None) -> tuple[Worker, GroqConnection, NATS]:
    """Connect (NATS, Groq), open the L2 bucket, and start serving. Returns what `stop_worker` needs."""
    own_nc = nc is None
    if nc is None:
        nc = await nats.connect(nats_url or GroqSettings.from_env().nats_url,
                                name="groqpolicy-worker", max_reconnect_attempts=-1)
    if groq_conn is None:
        groq_conn = await connect_groq()
    kv = await KVCache.open(nc.jetstream()) if l2 else None
    engine = InferenceEngine(groq_conn.client, catalog or default_catalog(), emulated=groq_conn.emulated,
                             settings=settings, l2=kv)
    worker = await Worker(nc, engine, queue_group=queue_group, owns_nc=own_nc, max_inflight=max_inflight).start()
    return worker, groq_conn, nc


async def stop_worker(worker: Worker, groq_conn: GroqConnection | None = None, nc: NATS | None = None) -> None:
    await worker.stop()
    if groq_conn is not None:
        await groq_conn.close()
    if nc is not None and worker.owns_nc and not nc.is_closed:
        await nc.drain()


__all__ = ["GroqConnection", "Worker", "connect_groq", "start_worker", "stop_worker"]
