"""What the evaluation APIs run on: the in-process evaluator and the follower that hot-swaps its
revisions, the pipeline, the `policy.evaluate` service and the client of the inference workers.

Each is built once by the composition root (`controlplane.services`) with what it needs, and
started and stopped through the app's one lifecycle: the objects that need the NATS connection get
its holder (`NatsConnection`) at construction and use it once started.

The follower keeps the evaluator on the active `groqpolicy` wasm revision of the revision store:
it loads it at start and again on every activation (this replica's writes, another replica's seen
through the policy store's KV watch, a library republish). A revision that does not load is
reported and skipped; the previous one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from bridge.inference.catalog import Catalog
from bridge.inference.client import InferClient
from bridge.inference.latency import from_buckets, summary
from bridge.inference.micro import endpoint_data, gather_stats
from bridge.inference.wire import WORKER_SERVICE
from bridge.kernel.errors import GroqPolicyError, error_document
from bridge.opawasm import WasmEvaluator
from controlplane.bundles.revisions import RevisionStore
from controlplane.evaluation.nats_service import EvaluateService
from controlplane.evaluation.pipeline import Pipeline
from controlplane.infra.nats import NatsConnection, NatsUnavailable
from controlplane.policies.bundler import LIBRARY_BUNDLE
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
STATS_WAIT_S = 0.25  # the longest /api/v1/groq/models waits for the workers' $SRV.STATS replies


class ModelClient:
    """The control plane's client of the inference workers (`groq.infer.<tier>` over NATS): for the
    pipeline's model stage (`request`), for `http.send` from policies evaluated on worker threads
    (`transport`) and for `/api/v1/groq/inference`. Its `InferClient` is made once connected."""

    def __init__(self, nats: NatsConnection, *, cache_size: int) -> None:
        self._nats = nats
        self._cache_size = cache_size
        self.client: InferClient | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._call: Callable[[str, Any, float], tuple[int, Any]] | None = None

    async def start(self) -> None:
        self.client = InferClient(self._nats.client, cache_size=self._cache_size)
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._call = self.client.transport(self.loop)

    async def stop(self) -> None:
        self._call = None

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        """(status, body, max-age) of one `InferRequest` JSON body; raises GroqPolicyError when no
        worker can answer."""
        client = self.client
        if client is None:
            raise NatsUnavailable("NATS: the control plane is not connected; no inference worker can be reached")
        return await client.request(tier, body)

    def connected(self) -> InferClient:
        """The client, when NATS is connected (else NatsUnavailable, 503)."""
        nc = self._nats.nc
        if self.client is None or nc is None or not nc.is_connected:
            raise NatsUnavailable("NATS: the control plane is not connected; no inference worker can be reached")
        return self.client

    async def measured_latency(self, wait_s: float = STATS_WAIT_S) -> dict[str, dict[str, Any]]:
        """{model: {count, p50_ms, p90_ms, p99_ms, workers}}: the workers' latency sketches, merged
        (exactly: they are bucket counts). Empty when NATS is down or no worker has measured yet."""
        nc = self._nats.nc
        if nc is None or not nc.is_connected:
            return {}
        books: dict[str, list[dict[int, float]]] = {}
        for doc in await gather_stats(nc, WORKER_SERVICE, wait_s):
            for model, measured in (endpoint_data(doc).get("latency") or {}).items():
                buckets = measured.get("buckets") if isinstance(measured, dict) else None
                if isinstance(buckets, dict):
                    books.setdefault(model, []).append({int(k): float(c) for k, c in buckets.items()})
        return {model: {**summary(from_buckets(b)), "workers": len(b)} for model, b in books.items()}

    def transport(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        """The evaluator's `http.send` transport (blocking). A call made on the event loop's own
        thread is refused: it would wait on itself until its deadline."""
        call = self._call
        if call is None or threading.get_ident() == self._loop_thread:
            why = "no NATS connection yet" if call is None else "http.send evaluated on the event loop thread; refused"
            code = "nats_unavailable" if call is None else "evaluated_inline"
            return 503, error_document(GroqPolicyError(why, type_="unavailable_error", code=code))
        return call(tier, body, timeout)


class RevisionFollower:
    """Keeps the evaluator on the revision store's active wasm revision of the library bundle."""

    def __init__(self, revisions: RevisionStore, evaluator: WasmEvaluator, bundle: str = LIBRARY_BUNDLE) -> None:
        self.revisions, self.evaluator, self.bundle = revisions, evaluator, bundle
        self.errors: list[str] = []
        self._etag: str | None = None
        self._load_lock = threading.Lock()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        # at start the process is not ready until the serving compile is done (or found on disk)
        await anyio.to_thread.run_sync(lambda: self.reload(baseline_first=False))
        self._task = asyncio.create_task(self._follow(), name="wasm-bundle-follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # it died earlier; stopping goes on
                log.exception("wasm revision follower had failed")
        self.evaluator.close()

    def reload(self, force: bool = False, baseline_first: bool = True) -> bool:
        """Load the active revision if it is not the one loaded (or with `force`, again); thread-safe.
        `baseline_first`: served on the baseline compiler's code until the serving compile behind it
        ends (`WasmEvaluator.load`), so a write's response and the agents' activation of the same
        revision do not wait for that compile."""
        with self._load_lock:
            active = self.revisions.get(self.bundle, "wasm")
            if active is None or (active[0].etag == self._etag and not force):
                return False
            meta, archive = active
            self._etag = meta.etag  # a revision that does not load is not retried forever
            try:
                self.evaluator.load(archive, baseline_first=baseline_first)
            except Exception as exc:  # noqa: BLE001 - the old revision keeps serving; say why
                self.errors.append(f"wasm revision {meta.revision}: not loaded: {exc}")
                log.error("wasm revision %s: not loaded: %s", meta.revision, exc)
                return False
            log.info("in-process evaluator: now on %s", meta.revision)
            return True

    async def _follow(self) -> None:
        while True:
            known = {self._etag} if self._etag else set()
            if await self.revisions.wait_for_change(self.bundle, "wasm", known, timeout=60):
                await anyio.to_thread.run_sync(self.reload)


@dataclass
class EvaluationRuntime:
    """The evaluation side of the control plane, as the composition root built it."""

    nats: NatsConnection
    models: ModelClient
    evaluator: WasmEvaluator
    follower: RevisionFollower
    pipeline: Pipeline
    service: EvaluateService
    policies: PolicyService  # what the pipeline evaluates, and what `/api/v1/opa/evaluate` looks up
    catalog: Catalog
    opa_url: str  # the OPA agent `/api/v1/opa/evaluate` asks when use_wasm is false

    @property
    def errors(self) -> list[str]:
        """What did not load: stored policies (at start, or refused by the store), wasm revisions."""
        return self.policies.errors + self.follower.errors

    @property
    def infer(self) -> InferClient | None:
        return self.models.client

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The app's event loop, once started (tools and tests schedule store calls on it)."""
        return self.models.loop

    def revision(self) -> str:
        return self.evaluator.revision or ""
