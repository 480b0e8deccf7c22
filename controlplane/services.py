"""The composition root: every long-lived object of the control plane, built once per app with its
collaborators, and the one ordered lifecycle that starts and stops them.

Nothing is attached after construction. Objects that need the NATS connection get its holder
(`NatsConnection`) and use it once started; the pipeline gets its evaluator, model client, decision
recorder and escalation sink when it is built. `Lifecycle` starts the components in order and stops
the started ones in reverse (also when a start fails), as OPA's plugin manager does, so the app
hands Litestar one start hook and one stop hook.

A stop has `STOP_BUDGET_S` in all, shared by the components in their order: the supervisor kills a
process 10 s after asking it to stop (`ManagedProcess.stop`), and uvicorn's own stop (up to 2 s for
open connections) comes before the application's, the writing of what the stop logged (up to 1 s,
`controlplane.ops.serving`) after it. With NATS up every stop takes milliseconds; with a NATS that
takes its messages and answers none (a frozen server, a partition the TCP connection has not noticed)
each one waiting on it would wait out its own timeout, 30 s and more in all. A stop still running
when the budget is spent is cut off (cancelled, and logged; left running if it does not end then);
each one after it still gets `LAST_SLICE_S` for what needs no network (closing files, its last log
line). So the application's stop ends within the budget plus `LAST_SLICE_S` twice per component
that is cut off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import anyio
from nats.aio.client import Client as NatsClient

from bridge.inference.cache import KVCache
from bridge.inference.catalog import default_catalog
from bridge.kernel.config import GroqSettings, NatsSettings, Settings
from bridge.kernel.errors import GroqPolicyError
from bridge.kernel.tasks import retrieve_outcome
from bridge.opabundle.keys import SigningKey
from bridge.opawasm import HostConfig, WasmEvaluator
from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.sandbox import bridge_token, sandbox_overlay
from controlplane.agents.sharing import StatusSharing
from controlplane.agents.status import StatusStore
from controlplane.audit import AuditTrail
from controlplane.audit.certifications import CertificationRecorder
from controlplane.audit.wiring import EscalationPublisher, RecordingAuditSink
from controlplane.auth.tokens import TokenSet, ensure_tokens
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import load_definitions
from controlplane.bundles.keystore import ensure_signing_key
from controlplane.bundles.publisher import BundlePublisher
from controlplane.bundles.revisions import RevisionStore
from controlplane.certification.certifier import Certifier
from controlplane.certification.checks import PolicyChecks
from controlplane.certification.library import LibraryCertificates
from controlplane.dashboard.auth import SignInCodes, ensure_shared_codes, shared_codes
from controlplane.evaljobs.service import EvalJobs
from controlplane.evaljobs.shared import ensure as ensure_evaljobs
from controlplane.evaljobs.store import JobStore
from controlplane.evaluation.model_stage import metered_transport
from controlplane.evaluation.nats_service import EvaluateService
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.runtime import EvaluationRuntime, ModelClient, RevisionFollower
from controlplane.impact import shadow_state
from controlplane.impact.batched import BatchAsker
from controlplane.impact.replay import OnlineReAsk
from controlplane.impact.service import ImpactService
from controlplane.impact.shadow import ShadowMode
from controlplane.impact.shadow_state import ShadowBucket
from controlplane.impact.shadow_thread import threadsafe_ask
from controlplane.impact.store import ReplayStore, ensure_stream
from controlplane.impact.tap import AgentDecisions, JudgmentTap, ObservingRecorder
from controlplane.infra.nats import NatsConnection
from controlplane.infra.natsauth import Step as NatsStep
from controlplane.infra.recordkeys import RecordKeys, ensure_record_keys
from controlplane.metrics.gauges import StoreGauges
from controlplane.policies.bundler import PolicyBundler
from controlplane.policies.service import PolicyService
from controlplane.policies.store import PolicyStore

log = logging.getLogger(__name__)


STOP_BUDGET_S = 6.0  # the application's stop in all (see above): with uvicorn's 2 s and the log's 1, inside 10 s
LAST_SLICE_S = 0.1  # a component's stop reached after the budget is spent still gets this long


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Step:
    """A start (and optionally a stop) that is not an object of its own, as a component."""

    on_start: Callable[[], Awaitable[object]]
    on_stop: Callable[[], Awaitable[object]] | None = None

    async def start(self) -> None:
        await self.on_start()

    async def stop(self) -> None:
        if self.on_stop is not None:
            await self.on_stop()


class Lifecycle:
    """Named components, started in order and stopped in reverse, within `stop_budget_s` in all."""

    def __init__(self, components: list[tuple[str, Component]], stop_budget_s: float = STOP_BUDGET_S) -> None:
        self.components = components
        self.stop_budget_s = stop_budget_s
        self._started: list[tuple[str, Component]] = []

    async def start(self) -> None:
        for name, component in self.components:
            try:
                await component.start()
            except BaseException:
                log.error("start-up failed at %s; stopping what was started", name)
                await self.stop()
                raise
            self._started.append((name, component))

    async def stop(self) -> None:
        started, self._started = self._started, []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_budget_s
        for name, component in reversed(started):
            await _stop(name, component, max(deadline - loop.time(), LAST_SLICE_S), self.stop_budget_s)


async def _stop(name: str, component: Component, seconds: float, budget_s: float) -> None:
    """`component.stop()` for at most `seconds`, then cancelled; one that does not end within
    LAST_SLICE_S of its cancellation (it caught it, or waits on something that ignores it) is left
    running: the stop goes on, the process is about to end."""
    task = asyncio.ensure_future(component.stop())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=LAST_SLICE_S)
        left = "" if done else "; it did not end when cancelled, left running"
        log.warning("stopping %s: cut off after %.1f s (a stop has %.1f s in all)%s", name, seconds, budget_s, left)
        task.add_done_callback(retrieve_outcome)  # it was logged as cut off
        return
    exc = None if task.cancelled() else task.exception()
    if exc is not None and not isinstance(exc, Exception):
        raise exc
    if exc is not None:  # every component gets its stop, whatever another one's did
        log.error("stopping %s failed", name, exc_info=exc)



@dataclass
class Services:
    settings: Settings
    store: RevisionStore  # the active bundle revisions (what agents download)
    decision_logs: DecisionLogStore
    statuses: StatusStore
    signing_key: SigningKey
    publisher: BundlePublisher
    nats: NatsConnection
    policies: PolicyService
    recorder: RecordingAuditSink  # the audit trail, as the pipeline's decision recorder
    runtime: EvaluationRuntime  # evaluator, hot swap, pipeline, policy.evaluate, inference client
    gauges: StoreGauges  # what /metrics reads from the stores at scrape time
    replay: ReplayStore  # decisions' inputs and the model's judgments (controlplane.impact)
    impact: ImpactService
    batch: BatchAsker  # the Groq Batch API client of `impact via=batch` (the worker's endpoint settings)
    shadows: ShadowMode
    evaljobs: EvalJobs  # evaluation jobs, online or through the Batch API (in JetStream; without NATS in <state_dir>)
    agent_decisions: AgentDecisions  # agents' decision logs into the replay store
    status_sharing: StatusSharing  # agents' status reports, seen by every process of the deployment
    tokens: TokenSet | None = None  # bearer tokens and scopes (controlplane.auth); None refuses everyone
    bridge_token: str = ""  # what the gateway requires; bundles carry it (controlplane.agents.sandbox)
    signin_codes: SignInCodes = field(default_factory=SignInCodes)  # the dashboard's one-time sign-in links
    startup_errors: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        store = RevisionStore(settings.state_dir)
        key = ensure_signing_key(settings)
        tokens, token = ensure_tokens(settings), bridge_token(settings)
        compiler = Compiler(settings.rego_root, bridge_url=settings.bridge_url)
        publisher = BundlePublisher(compiler, store, key, settings.rego_root,
                                    overlay=sandbox_overlay(settings, tokens, token))
        nats = NatsConnection(settings, NatsSettings.from_env(), bootstrap_steps=jetstream_steps(settings))
        record_keys = ensure_record_keys(settings)  # signs audit records, checkpoints, policy records and shared sign-in codes
        recorder = RecordingAuditSink(settings, nats, record_keys)
        models = ModelClient(nats, cache_size=settings.gateway_cache_size)
        replay = ReplayStore(lambda: nats.client, settings)
        policy_store = PolicyStore(lambda: nats.client.jetstream(), replicas=settings.nats_replicas, keys=record_keys)
        tap = JudgmentTap(replay, type_of=lambda name: next((r.policy_type for r in policy_store.records() if r.name == name), None))
        vkey = key.verification_key()
        host = HostConfig(bridge_url=settings.bridge_url, infer_transport=metered_transport(tap.transport(models.transport)))
        # an instance per evaluation thread (both kinds: `scheduling`) and one inline; off the loop: no fuel (lanes.py)
        cpus = settings.evaluation_cpu_threads or os.cpu_count() or 1
        evaluator = WasmEvaluator({vkey.kid: vkey}, keyid=vkey.kid, host=host,
                                  pool_size=settings.evaluation_threads + cpus + 1, fuel_free_lane=True)
        follower = RevisionFollower(store, evaluator)
        def library_sources() -> list[Path]:
            return [settings.rego_root / s for s in bundler.library().sources]

        checks = PolicyChecks(lambda: compiler.opa, library_sources)
        bundler = PolicyBundler(compiler, publisher, settings.rego_root, settings.bundles_dir,
                                library_certificates=LibraryCertificates(checks, record_keys, library_sources,
                                                                         settings.state_dir / "library-certificates"))
        certifier = Certifier(checks, record_keys, ask_model=models.request,
                              record=CertificationRecorder(lambda: recorder.trail, lambda: nats.connected))
        policies = PolicyService(policy_store, bundler, on_published=follower.reload, certifier=certifier)
        serving_ask = threadsafe_ask(models.request, lambda: models.loop)  # for the replay's and the shadows' threads
        shadows = ShadowMode(policies, settings, models.transport, serving_ask, audit=recorder.append_many, store=replay,
                             bucket=ShadowBucket(lambda: nats.client, settings.nats_replicas))
        nats.on_reconnect += [policy_store.resync, shadows.resync]  # a KV watch does not survive a server restart
        pipeline = Pipeline(evaluator, policies.active_records, ask_model=tap.ask(models.request),
                            recorder=ObservingRecorder(recorder, replay, [shadows]), escalate=EscalationPublisher(nats),
                            queue=settings.evaluation_queue, cpu_threads=cpus, peers=(nats, settings.processes))
        runtime = EvaluationRuntime(nats=nats, models=models, evaluator=evaluator, follower=follower, pipeline=pipeline,
                                    service=EvaluateService(nats, pipeline), policies=policies,
                                    catalog=default_catalog(), opa_url=settings.opa_url)
        decision_logs = DecisionLogStore(settings.state_dir, max_file_bytes=settings.decision_log_file_bytes,
                                         max_age_s=settings.decision_log_max_age_s)
        statuses = StatusStore(settings.state_dir)
        gauges = StoreGauges(store, statuses, decision_logs, evaluator=evaluator,
                             audit_writer=lambda: recorder.trail.writer if recorder.trail is not None else None)
        batch = BatchAsker(GroqSettings.from_env(), runtime.catalog)
        impact = ImpactService(replay, policies, settings, OnlineReAsk(models.transport, serving_ask),
                               audit=recorder.append_many, batch=batch)
        evaljobs = EvalJobs(JobStore(settings.state_dir), pipeline=pipeline, policies=policies, revisions=store,
                            key=key.verification_key, bridge_url=settings.bridge_url, batch=batch,
                            audit=recorder.append_many, nats=nats.connected_client, replicas=settings.nats_replicas,
                            results_max_bytes=settings.evaljobs_max_bytes)
        return cls(settings=settings, store=store, decision_logs=decision_logs, statuses=statuses, signing_key=key,
                   publisher=publisher, nats=nats, policies=policies, recorder=recorder, runtime=runtime,
                   gauges=gauges, replay=replay, impact=impact, batch=batch, shadows=shadows, evaljobs=evaljobs,
                   agent_decisions=AgentDecisions(replay, tap, settings.bridge_url, policies.active_records),
                   status_sharing=StatusSharing(nats, statuses), tokens=tokens, bridge_token=token,
                   signin_codes=SignInCodes(shared_codes(nats.connected_client), lambda: tokens, record_keys))

    def components(self) -> list[tuple[str, Component]]:
        """What runs while the app runs, in start order: the connection first, then what uses it;
        policy.evaluate answers only once the evaluator, the pipeline and the audit trail are up."""
        rt = self.runtime
        return [
            ("NATS connection", Step(self.nats.connect, self.nats.close)),
            ("inference client", rt.models),
            ("audit trail", self.recorder),
            ("replay store", self.replay),
            ("policy store", self.policies),
            ("evaluator follower", rt.follower),
            ("pipeline", rt.pipeline),
            ("policy.evaluate", rt.service),
            ("agent status sharing", self.status_sharing),
            ("shadow mode", self.shadows),
            ("impact analysis", self.impact),  # the replay helpers' fork server starts in the background
            ("batch API client", self.batch),
            ("evaluation jobs", self.evaljobs),
            ("bundles at start", Step(self.publish_at_start)),
        ]

    @property
    def audit(self) -> AuditTrail | None:
        """The audit trail, once started."""
        return self.recorder.trail

    @property
    def errors(self) -> list[str]:
        """Everything that did not load or publish; the app is degraded while there is any."""
        return self.startup_errors + self.runtime.errors

    async def publish_definitions(self, force: bool = False) -> list[str]:
        """Compile and activate the bundle definitions in `bundles/` whose sources changed (off the
        loop); the library certifications that took are then on the audit trail."""
        try:
            return await anyio.to_thread.run_sync(
                lambda: self.policies.publish_library(load_definitions(self.settings.bundles_dir), force=force))
        finally:
            await self.policies.record_library_certifications()

    async def publish_at_start(self) -> None:
        """`compile_on_start`: publish what changed; a failure keeps the previous revision serving."""
        if not self.settings.compile_on_start:
            return
        try:
            published = await self.publish_definitions()
            log.info("bundles published at start: %s", published or "none changed")
        except GroqPolicyError as exc:
            self.startup_errors.append(str(exc))
            log.error("bundle publish at start failed: %s", exc)


def jetstream_steps(settings: Settings) -> list[NatsStep]:
    """The streams and buckets the product needs, each made by its owner's own get-or-create code.
    Run by whoever starts nats-server (the supervisor, an embedded server), as the bootstrap
    identity, before any other role connects: no running role may create or update a stream."""

    # creating a stream signs nothing: the owners' constructors ask for record keys, and a key held
    # in memory for the moment keeps the private key out of whoever bootstraps (the supervisor)
    unused = RecordKeys.generate()

    async def audit_stream(nc: NatsClient) -> None:  # and its checkpoints' bucket
        await AuditTrail(nc, keys=unused, replicas=settings.nats_replicas, max_age_s=settings.audit_max_age_s,
                         max_bytes=settings.audit_max_bytes).ensure_stream()

    async def policy_store(nc: NatsClient) -> None:
        await PolicyStore(nc.jetstream, replicas=settings.nats_replicas, keys=unused).ensure()

    async def judgments(nc: NatsClient) -> None:
        await KVCache.ensure(nc.jetstream())

    async def replay_store(nc: NatsClient) -> None:
        await ensure_stream(nc, settings)

    async def shadows(nc: NatsClient) -> None:
        await shadow_state.ensure(nc, settings.nats_replicas)

    async def signin_codes(nc: NatsClient) -> None:
        await ensure_shared_codes(nc.jetstream(), replicas=settings.nats_replicas)

    async def evaluation_jobs(nc: NatsClient) -> None:
        await ensure_evaljobs(nc.jetstream(), replicas=settings.nats_replicas,
                              results_max_bytes=settings.evaljobs_max_bytes)

    return [audit_stream, policy_store, judgments, replay_store, shadows, signin_codes, evaluation_jobs]

