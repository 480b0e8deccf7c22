"""What the policies and evaluation APIs run on, started and stopped with the app.

Start: NATS (configured or embedded) -> policy KV/object store (initial view) -> bundle for the
stored policies (when they are not what is active) -> in-process WASM evaluator on the active
`groqpolicy` wasm revision -> a task that follows the revision store (hot swap on every activation,
from this replica's writes, another replica's writes seen through the KV watch, or a library
republish) -> `policy.evaluate` on NATS.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

import anyio

from bridge.inference.catalog import Catalog, default_catalog
from bridge.inference.client import InferClient
from bridge.kernel.errors import GroqPolicyError
from bridge.opawasm import HostConfig, WasmEvaluator
from controlplane.evaluation.pipeline import WASM_POOL_SIZE, Pipeline, metered_transport
from controlplane.infra.nats import NatsConnection, NatsUnavailable
from controlplane.policies.bundler import LIBRARY_BUNDLE, PolicyBundler
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.service import PolicyService
from controlplane.policies.store import PolicyStore

if TYPE_CHECKING:
    from bridge.kernel.config import Settings
    from bridge.opabundle.keys import SigningKey
    from controlplane.bundles.publisher import BundlePublisher
    from controlplane.evaluation.nats_service import EvaluateService

log = logging.getLogger(__name__)


class NotStarted(GroqPolicyError):
    status = 503


class PolicyRuntime:
    def __init__(self, settings: Settings, publisher: BundlePublisher, signing_key: SigningKey) -> None:
        self.settings = settings
        self.revisions = publisher.store
        self.bundler = PolicyBundler(publisher.compiler, publisher, settings.rego_root, settings.bundles_dir)
        vkey = signing_key.verification_key()
        self.host = HostConfig(bridge_url=settings.bridge_url)
        self.evaluator = WasmEvaluator({vkey.kid: vkey}, keyid=vkey.kid, host=self.host, pool_size=WASM_POOL_SIZE)
        self.pipeline = Pipeline(self.evaluator, self.active_records, self.revision)
        self.nats = NatsConnection(settings)
        self._store: PolicyStore | None = None
        self._policies: PolicyService | None = None
        self.infer: InferClient | None = None
        self.catalog: Catalog = default_catalog()
        self.errors: list[str] = []
        self._etag: str | None = None
        self._load_lock = threading.Lock()
        self._follow_task: asyncio.Task | None = None
        self._service: EvaluateService | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- accessors the handlers use ---------------------------------------------------------------
    @property
    def store(self) -> PolicyStore:
        if self._store is None:
            raise NotStarted("policy store: not started (no NATS connection yet)")
        return self._store

    @property
    def policies(self) -> PolicyService:
        if self._policies is None:
            raise NotStarted("policy store: not started (no NATS connection yet)")
        return self._policies

    def active_records(self) -> list[PolicyRecord]:
        return self._policies.active_records() if self._policies is not None else []

    def active_modules(self) -> dict[str, str]:
        return self._policies.active_modules() if self._policies is not None else {}

    def revision(self) -> str:
        return self.evaluator.revision or ""

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        from controlplane.evaluation.nats_service import EvaluateService

        nc = await self.nats.connect()
        self.loop = asyncio.get_running_loop()  # the app's loop (tools and tests schedule store calls on it)
        self.infer = InferClient(nc, cache_size=self.settings.gateway_cache_size)
        self.pipeline.ask_model = self.infer.request
        self.host.infer_transport = metered_transport(self.infer.transport(asyncio.get_running_loop()), threading.get_ident())
        self._store = PolicyStore(nc.jetstream(), replicas=self.settings.nats_replicas)
        await self._store.open()
        self._policies = PolicyService(self._store, self.bundler, self.reload)
        self._store.on_change = self._on_change
        self.nats.on_reconnect.append(self._store.resync)
        if self.active_records():
            try:
                await self._policies.reconcile()
            except GroqPolicyError as exc:
                self.errors.append(f"stored policies: {exc}")
        await anyio.to_thread.run_sync(self.reload)
        self._follow_task = asyncio.create_task(self._follow(), name="wasm-bundle-follow")
        self._service = await EvaluateService(nc, self).start()

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()
        if self._follow_task is not None:
            self._follow_task.cancel()
            try:
                await self._follow_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._store is not None:
            await self._store.close()
        await self.nats.close()
        self.evaluator.close()

    async def _on_change(self) -> None:
        try:
            await self.policies.reconcile()
        except GroqPolicyError:
            pass  # recorded in reconcile_errors; the previous revision keeps serving

    # -- hot swap ---------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the active wasm revision into the evaluator if it is not the one loaded (thread-safe)."""
        with self._load_lock:
            active = self.revisions.get(LIBRARY_BUNDLE, "wasm")
            if active is None or active[0].etag == self._etag:
                return False
            meta, archive = active
            try:
                self.evaluator.load(archive)
            except Exception as exc:  # noqa: BLE001 - the old revision keeps serving; say why
                self.errors.append(f"wasm revision {meta.revision}: not loaded: {exc}")
                log.error("wasm revision %s: not loaded: %s", meta.revision, exc)
                self._etag = meta.etag  # do not retry the same bytes forever
                return False
            self._etag = meta.etag
            log.info("in-process evaluator: now on %s", meta.revision)
            return True

    async def _follow(self) -> None:
        while True:
            known = {self._etag} if self._etag else set()
            if await self.revisions.wait_for_change(LIBRARY_BUNDLE, "wasm", known, timeout=60):
                await anyio.to_thread.run_sync(self.reload)

    def infer_client(self) -> InferClient:
        if self.infer is None or self.nats.nc is None or not self.nats.nc.is_connected:
            raise NatsUnavailable("NATS: the control plane is not connected; no inference worker can be reached")
        return self.infer
