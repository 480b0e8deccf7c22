"""Evaluation jobs as a service: submitted, run in the background one at a time, kept on disk.

`via=batch` decides the contexts in passes whose judgments only GroqCloud's Batch API answers
(`passes`), then sends the final decisions' constitutional violations to the escalation sink and
writes the decisions to the audit trail as batch records saying `via: batch` and the Batch API jobs
that answered; results are served only once recorded (a trail that refuses fails the job). `via=online` runs the contexts through the live pipeline in batches of
`MAX_BATCH` (judgments asked of the inference workers now, each batch recorded as
`/api/v1/evaluate/batch` records it): the baseline a batch job is measured against.

Every client mistake is found before the job is accepted (`check_contexts`, the constitution's
hash, a Batch API endpoint, an active revision): the caller gets a 4xx (or 503) and no job.

Where the jobs live: on NATS, in JetStream (`shared`), so every process of the deployment answers
for every job, and a cancel asked of any process reaches the runner through the job's cancel flag,
read at each heartbeat. Without JetStream at start (no NATS connection, or the buckets cannot be
opened), in this process's state directory (`store`): a job then lives on the process that ran it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from bridge.inference.batch import BatchProgress
from bridge.kernel.errors import Conflict, GroqPolicyError, NotFound, Unavailable
from bridge.kernel.vocabulary import check_hash
from bridge.opabundle.keys import VerificationKey
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.bundles.revisions import RevisionStore
from controlplane.evaljobs.passes import BatchEvaluation, Cancelled, audit_records
from controlplane.evaljobs.schemas import FINISHED, BatchView, Job, JobRequest, Judgments, check_contexts
from controlplane.evaljobs.shared import HEARTBEAT_S, RESULTS_MAX_BYTES, SharedJobs, Superseded
from controlplane.evaljobs.store import KEPT_JOBS, JobStore
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.schemas import MAX_BATCH, EvaluateResponse
from controlplane.impact.batched import BatchAsker, BatchReAsk
from controlplane.policies.bundler import LIBRARY_BUNDLE
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
CANCEL_WAIT_S = 5.0  # a Batch API job's cancel may not hold up a stop for the SDK's whole timeout
MAX_PENDING = 8  # jobs queued or running at once: each holds its contexts in memory until it ends
# what `submit` hands out (uuid4 hex): anything else names no job, and never reaches a KV key or a file name
JOB_ID = re.compile(r"[0-9a-f]{32}")
REMOTE_CANCEL_WAIT_S = 10.0  # a cancel asked of another process's job: how long the answer waits for it to end
AuditAppend = Callable[[list[AuditRecord]], Awaitable[list[StoredRecord]]]


class EvalJobs:
    def __init__(self, store: JobStore, *, pipeline: Pipeline, policies: PolicyService, revisions: RevisionStore,
                 key: Callable[[], VerificationKey], bridge_url: str, batch: BatchAsker, audit: AuditAppend,
                 nats: Callable[[], NatsClient | None] = lambda: None, replicas: int = 1,
                 results_max_bytes: int = RESULTS_MAX_BYTES) -> None:
        self.store, self.pipeline, self.policies, self.revisions = store, pipeline, policies, revisions
        self.key, self.bridge_url, self.batch, self.audit = key, bridge_url, batch, audit
        self.nats, self.replicas, self.results_max_bytes = nats, replicas, results_max_bytes
        self.shared: SharedJobs | None = None  # on NATS: the deployment's jobs; else the state directory's
        self.runner = f"{socket.gethostname()}:{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._heartbeat: asyncio.Task[None] | None = None
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, BatchEvaluation] = {}
        self._cancelling: set[str] = set()
        self._superseded: set[str] = set()  # marked interrupted by another process: never written again
        self._slot: asyncio.Lock | None = None  # one job runs at a time; the others wait queued

    async def start(self) -> None:
        self._slot = asyncio.Lock()
        nc = self.nats()
        try:
            self.shared = await SharedJobs.open(nc, self.replicas, self.results_max_bytes) if nc is not None else None
        except (NatsError, TimeoutError) as exc:
            log.error("evaluation jobs: the bucket cannot be opened (%s: %s)", type(exc).__name__, exc)
        if self.shared is not None:
            await asyncio.to_thread(self.store.clear_downloads)
            self._heartbeat = asyncio.create_task(self._beat(), name="evaluation-jobs-heartbeat")
            return
        log.warning("evaluation jobs: no JetStream; jobs are kept in this process's state directory and only this "
                    "process answers for them (with several processes, a poll reaching another one gets 404)")
        jobs = await asyncio.to_thread(lambda: self.store.forget(self.store.load()))
        self.jobs = {j.id: j for j in jobs}

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        tasks = list(self._tasks.values())
        for run in self._runs.values():
            run.cancelled.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- the API's ----------------------------------------------------------------------------
    async def submit(self, req: JobRequest, who: str = "") -> Job:
        contexts = check_contexts(req)
        check_hash(req.constitutional_hash)
        if len(self._tasks) >= MAX_PENDING:
            raise Unavailable(f"evaluation jobs: {MAX_PENDING} are queued or running already; retry when one ends")
        if req.via == "batch":
            self.batch.require()  # 503 naming the settings when there is no Groq endpoint
        active = self.revisions.get(LIBRARY_BUNDLE, "wasm")
        if active is None:
            raise Unavailable("evaluation jobs: no active policy revision yet; retry once the bundle is published")
        meta, archive = active
        job = Job(id=uuid.uuid4().hex, state="queued", via=req.via, performance_tier=req.performance_tier,
                  policy_types=list(req.policy_types), contexts=len(contexts), created_at=time.time(), by=who,
                  revision=meta.revision if req.via == "batch" else "", runner=self.runner, heartbeat_at=time.time())
        await self._save(job)
        self.jobs[job.id] = job
        records = list(self.policies.active_records())
        self._tasks[job.id] = asyncio.create_task(self._run(job, req, contexts, archive, records),
                                                  name=f"evaluation-job-{job.id}")
        return job

    async def get(self, job_id: str, viewer: str | None = None) -> Job:
        """The job; `viewer` (a token name) sees only the jobs it submitted, None (admin) sees all.
        Another's job is 404, as one that does not exist: its id is not confirmed to the caller."""
        if JOB_ID.fullmatch(job_id) is None:
            raise NotFound(f"evaluation job {job_id[:64]!r}: not found (job ids are 32 hex digits)")
        job = self.jobs.get(job_id) if job_id in self._tasks or self.shared is None else None  # ours: the live one
        if job is None and self.shared is not None:
            job = await self.shared.get(job_id)
        if job is None or (viewer is not None and job.by != viewer):
            raise NotFound(f"evaluation job {job_id!r}: not found")
        return job

    async def listing(self, viewer: str | None = None) -> list[Job]:
        jobs = list(self.jobs.values()) if self.shared is None else await self.shared.listing()
        mine = sorted((j for j in jobs if viewer is None or j.by == viewer), key=lambda j: j.created_at, reverse=True)
        return mine[:KEPT_JOBS]  # the newest: a bounded answer (pruning keeps about this many anyway)

    async def results(self, job_id: str, viewer: str | None = None) -> tuple[Path, bool]:
        """The results' file, and whether it is a download of this request's to remove once sent."""
        job = await self.get(job_id, viewer)
        if job.state != "completed":
            raise Conflict(f"evaluation job {job_id}: {job.state}; results exist once it is completed"
                           + (f" ({job.error})" if job.error else ""))
        if self.shared is None:
            return self.store.results_path(job_id), False
        into = self.store.dir / f"{job_id}.{uuid.uuid4().hex}.download"
        await self.shared.results(job_id, into)
        return into, True

    async def cancel(self, job_id: str, viewer: str | None = None) -> Job:
        job = await self.get(job_id, viewer)
        if job.state in FINISHED:
            if job.state == "cancelled":
                return job
            raise Conflict(f"evaluation job {job_id}: already {job.state}; nothing to cancel")
        if job_id not in self._tasks and self.shared is not None:
            return await self._cancel_elsewhere(self.shared, job)
        self._cancel_here(job_id)
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        return job

    def _cancel_here(self, job_id: str) -> None:
        self._cancelling.add(job_id)
        run = self._runs.get(job_id)
        if run is not None:
            run.cancelled.set()
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()

    async def _cancel_elsewhere(self, shared: SharedJobs, job: Job) -> Job:
        """Another process runs the job: its cancel flag is set, and the answer waits for its runner
        to end it (at its next heartbeat) or give up after `REMOTE_CANCEL_WAIT_S` with the job as it is."""
        await shared.request_cancel(job.id)
        deadline = time.monotonic() + REMOTE_CANCEL_WAIT_S
        while job.state not in FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(HEARTBEAT_S / 4)
            job = await shared.get(job.id) or job
        return job

    async def _save(self, job: Job) -> None:
        if self.shared is not None:
            await self.shared.save(job)
        else:
            await asyncio.to_thread(self.store.save, job)

    async def _beat(self) -> None:
        """Every `HEARTBEAT_S`: each job this process holds says it is alive (with its progress), and
        a cancel asked of another process reaches it. A write refused because another process marked
        the job interrupted (it thought this runner dead) stops the job: its outcome would be lost."""
        assert self.shared is not None
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for job_id in list(self._tasks):
                job = self.jobs.get(job_id)
                if job is None or job.state in FINISHED:
                    continue
                try:
                    if await self.shared.cancel_requested(job_id):
                        self._cancel_here(job_id)
                        continue
                    job.heartbeat_at = time.time()
                    await self.shared.save(job, beat=True)  # nothing if the job ended meanwhile
                except Superseded as exc:
                    log.error("evaluation job %s: %s; stopped here", job_id, exc)
                    self._superseded.add(job_id)
                    if (task := self._tasks.get(job_id)) is not None:
                        task.cancel()
                except Unavailable as exc:  # the next beat tries again; STALE_S allows many
                    log.warning("evaluation job %s: heartbeat not written (%s)", job_id, exc)
                except Exception:  # a beat that fails must not end the beating: every job would go stale
                    log.exception("evaluation job %s: heartbeat failed", job_id)

    # ---- running ------------------------------------------------------------------------------
    async def _run(self, job: Job, req: JobRequest, contexts: list[dict[str, Any]], archive: bytes,
                   records: list[Any]) -> None:
        assert self._slot is not None  # started
        try:
            async with self._slot:
                job.state, job.started_at = "running", time.time()
                await self._save(job)
                if job.via == "batch":
                    responses = await self._batch(job, req, contexts, archive, records)
                else:
                    responses = await self._online(job, req, contexts)
                await self._write_results(job.id, responses)
                job.decisions = dict(Counter(r.decision for r in responses))
                job.state = "completed"
        except Superseded as exc:  # another process took it for dead and said so: it stays interrupted
            log.error("evaluation job %s: %s; stopped here", job.id, exc)
            self._superseded.add(job.id)
            await self._cancel_batch(job)
        except (asyncio.CancelledError, Cancelled):
            job.state = "cancelled" if job.id in self._cancelling else "interrupted"
            job.error = "cancelled by the caller" if job.state == "cancelled" else "the control plane stopped"
            await self._cancel_batch(job)
        except GroqPolicyError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a job's failure is its state, never the service's
            log.exception("evaluation job %s failed", job.id)
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished_at = time.time()
            await self._finish(job)
            self._tasks.pop(job.id, None)
            self._runs.pop(job.id, None)
            self._cancelling.discard(job.id)
            self._superseded.discard(job.id)

    async def _finish(self, job: Job) -> None:
        """The job's last state written (shielded: a stop cancelling the job still records how it ended)."""
        if self.shared is None:
            self.store.save(job)
            self.jobs = {j.id: j for j in self.store.forget(list(self.jobs.values()))}  # the oldest finished go
            return
        self.jobs.pop(job.id, None)
        if job.id in self._superseded:
            return
        try:
            await asyncio.shield(self.shared.save(job))
        except Superseded as exc:
            log.error("evaluation job %s: %s; its outcome (%s) is dropped", job.id, exc, job.state)
        except Unavailable as exc:  # its heartbeat goes stale: readers will say interrupted
            log.error("evaluation job %s: its end (%s) not written (%s)", job.id, job.state, exc)
        try:  # as the file fallback does: the finished jobs beyond KEPT_JOBS go, oldest first
            await asyncio.shield(self.shared.prune(KEPT_JOBS))
        except Unavailable as exc:  # the next job's end tries again
            log.warning("evaluation jobs: finished jobs not pruned (%s)", exc)

    async def _write_results(self, job_id: str, responses: list[EvaluateResponse]) -> None:
        if self.shared is None:
            await asyncio.to_thread(self.store.write_results, job_id, responses)
            return
        await self.shared.write_results(job_id, await asyncio.to_thread(ndjson, responses))  # megabytes: off the loop

    async def _batch(self, job: Job, req: JobRequest, contexts: list[dict[str, Any]], archive: bytes,
                     records: list[Any]) -> list[EvaluateResponse]:
        reask = BatchReAsk(self.batch.require())
        run = self._runs[job.id] = BatchEvaluation(self.key(), archive, records, self.bridge_url, reask)
        started = time.perf_counter()

        def on_pass(number: int, done: int) -> None:  # from the pass's thread: plain assignments only
            job.passes, job.done = number, done

        def on_batch(p: BatchProgress) -> None:
            job.batch = BatchView(id=p.batch_id, status=p.status, done=p.done, failed=p.failed, total=p.total)
            if p.batch_id not in job.batches:
                job.batches.append(p.batch_id)
            if self.shared is None:  # shared: the next heartbeat writes it
                self.store.save(job)

        responses = await run.run(contexts, policy_types=list(req.policy_types), tier=req.performance_tier,
                                  chash=req.constitutional_hash, on_pass=on_pass, on_batch=on_batch)
        job.judgments = judgments_of(reask)
        for response, ctx in zip(responses, contexts, strict=True):  # escalated as a live batch's are
            if response.constitutional_compliance.violations:
                await self.pipeline.escalate_violation(response, req.performance_tier, "batch", ctx)
        await self.audit(audit_records(job.id, responses, contexts, tier=req.performance_tier,
                                       latency_ms=(time.perf_counter() - started) * 1000, batches=job.batches))
        return responses

    async def _online(self, job: Job, req: JobRequest, contexts: list[dict[str, Any]]) -> list[EvaluateResponse]:
        job.passes = 1
        out: list[EvaluateResponse] = []
        for at in range(0, len(contexts), MAX_BATCH):
            found = await self.pipeline.evaluate_batch(
                contexts[at:at + MAX_BATCH], policy_types=list(req.policy_types), tier=req.performance_tier,
                constitutional_hash=req.constitutional_hash, explain=False, batch_id=job.id)
            out += [msgspec.structs.replace(r, input_context=None) for r in found]  # as a batch job's: no echo
            job.done = len(out)
            job.judgments.asked += sum(r.performance_metrics.model_calls for r in found)
            job.judgments.cost_usd = round(job.judgments.cost_usd + online_cost(found), 9)
        return out

    async def _cancel_batch(self, job: Job) -> None:
        """A cancelled job's running Batch API job is cancelled too (best effort: it is not paid for)."""
        if job.batch is None or job.batch.status in ("completed", "failed", "expired", "cancelled"):
            return
        try:
            await asyncio.wait_for(self.batch.require().client.batches.cancel(job.batch.id), CANCEL_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - the job is cancelled either way
            log.warning("evaluation job %s: batch %s not cancelled: %s", job.id, job.batch.id, exc)


def ndjson(responses: list[EvaluateResponse]) -> bytes:
    encoder, buf = msgspec.json.Encoder(), bytearray()
    for response in responses:
        encoder.encode_into(response, buf, -1)
        buf.extend(b"\n")
    return bytes(buf)


def online_cost(responses: list[EvaluateResponse]) -> float:
    """What the model calls behind these decisions cost at the online price, from the usage each
    reply reports (an answer from the worker's cache was paid for once, earlier: not counted)."""
    return sum(float((j.get("usage") or {}).get("cost_usd") or 0.0)
               for r in responses for p in r.policy_results for j in p.groq_inference_result if not j.get("cached"))


def judgments_of(reask: BatchReAsk) -> Judgments:
    """What the batches were asked: distinct requests, those with no usable answer (plus any still
    unanswered after the last pass), and their estimated cost at the batch price."""
    answers = list(reask.answers.values())
    failed = sum(1 for a in answers if a.get("degraded")) + len(reask.pending)
    cost = sum(float((a.get("usage") or {}).get("cost_usd") or 0.0) for a in answers)
    return Judgments(asked=len(answers), failed=failed, cost_usd=round(cost, 9))
