"""Evaluation jobs shared by every control-plane process (and replica) of a deployment, in JetStream.

    KV bucket     groqpolicy_evaljobs          job.<id>     the job (`Job`), its latest state and heartbeat
                                               cancel.<id>  a cancel asked by any process; the runner watches it
                                               quarantine.<id>  a job record that could not be decoded, moved aside
    object store  groqpolicy_evaljob_results   <id>.ndjson  its results, one `EvaluateResponse` a line in order

Why JetStream: with several processes sharing one socket (and replicas on other machines), the
connection that polls a job reaches any process, so the job and its results must be readable by
all of them; results go to an object store because a 10,000-context job's NDJSON is megabytes,
above NATS's default 1 MiB message. The process that accepted a job runs it and heartbeats it
(`HEARTBEAT_S`); a job still queued or running whose heartbeat is older than `STALE_S` lost its
runner (the process died or was cut off) and any process that reads it marks it `interrupted`,
with a compare-and-set on the revision it read, so a runner that comes back finds its next write
refused (`Superseded`) and drops its outcome: a job is never reported interrupted and then done.
Every write of a job's runner is a compare-and-set too (one stored without its acknowledgement
is recognized as the runner's own and written over: `save`). Entries and results expire `KEPT_S`
after their last write (the bucket's max age), so a finished job stays readable for a week; and
both are capped in bytes (the results store at the `evaljobs_max_bytes` setting, refusing new
results when full: that job fails saying so), and beyond `KEPT_JOBS` finished jobs the oldest go
when a job finishes (`prune`), as the file fallback keeps them: an `evaluate` client cannot fill
the JetStream store the audit stream shares.
A record that cannot be decoded is moved to `quarantine.<id>` and logged, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyValueError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from bridge.kernel.errors import NotFound, Unavailable
from controlplane.evaljobs.schemas import FINISHED, Job
from controlplane.infra.kvwatch import live_keys
from controlplane.infra.private import open_private

log = logging.getLogger(__name__)
BUCKET = "groqpolicy_evaljobs"
RESULTS = "groqpolicy_evaljob_results"
KEPT_S = 7 * 24 * 3600.0  # a job and its results are kept a week after their last write
HEARTBEAT_S = 1.0  # how often a runner says its jobs are alive (and reads their cancel flags)
KV_MAX_BYTES = 64 << 20  # job records are a few KiB: room for far more than KEPT_JOBS, a bound all the same
RESULTS_MAX_BYTES = 1 << 30  # the default of the `evaljobs_max_bytes` setting: fits a laptop's disk
STALE_S = 15.0  # a queued/running job unheard of this long lost its runner (generous: loaded machines, skew)
_decode_job = msgspec.json.Decoder(Job)


class StoreFull(Unavailable):
    """The results store is at its max_bytes: the job fails saying so (as its error), never a 500."""


class Superseded(Exception):
    """The job's record changed under its runner: another process marked it interrupted."""


P = ParamSpec("P")
R = TypeVar("R")


def _reachable(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """JetStream unreachable (a reconnect, a lost quorum) or refusing (a full store) is a 503 that
    says so, never a 500; in a job's own writes, its error."""

    @functools.wraps(call)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except (NatsError, TimeoutError) as exc:
            raise Unavailable(f"evaluation jobs: JetStream unreachable or refused ({type(exc).__name__}: {exc}); "
                              "retry") from None

    return wrapped


async def ensure(js: JetStreamContext, replicas: int = 1,
                 results_max_bytes: int = RESULTS_MAX_BYTES) -> tuple[KeyValue, ObjectStore]:
    """Get or create the bucket and the results store (NATS's bootstrap runs this; so does a control
    plane on a NATS without authorization, where nobody bootstrapped). Existing ones keep their config."""
    try:
        kv = await js.key_value(BUCKET)
    except BucketNotFoundError:
        kv = await js.create_key_value(bucket=BUCKET, history=1, ttl=KEPT_S, replicas=replicas, max_bytes=KV_MAX_BYTES,
                                       storage=StorageType.FILE, description="groqpolicy evaluation jobs")
    try:
        obs = await js.object_store(RESULTS)
    except (BucketNotFoundError, NotFoundError):
        obs = await js.create_object_store(RESULTS, config=ObjectStoreConfig(
            ttl=KEPT_S, max_bytes=results_max_bytes, replicas=replicas, storage=StorageType.FILE, description="groqpolicy evaluation job results"))
    return kv, obs


class SharedJobs:
    def __init__(self, kv: KeyValue, obs: ObjectStore, *, stale_s: float = STALE_S) -> None:
        self.kv, self.obs, self.stale_s = kv, obs, stale_s
        self._revisions: dict[str, int] = {}  # the jobs this process runs: the revision it wrote last
        self._writing = asyncio.Lock()  # a job's heartbeat and its runner's writes never race each other

    @classmethod
    async def open(cls, nc: NatsClient, replicas: int = 1, results_max_bytes: int = RESULTS_MAX_BYTES) -> SharedJobs:
        kv, obs = await ensure(nc.jetstream(), replicas, results_max_bytes)
        return cls(kv, obs)

    # ---- the runner's writes --------------------------------------------------------------------
    @_reachable
    async def save(self, job: Job, *, beat: bool = False) -> None:
        """Write a job this process runs; `Superseded` when another process marked it interrupted.
        A heartbeat (`beat`) of a job whose end is written already writes nothing: the job object is
        shared with its run, which may end while the heartbeat waits its turn."""
        async with self._writing:  # the record is encoded here: what is written is the job as it stands
            if beat and job.state in FINISHED:
                return
            key, data, last = f"job.{job.id}", msgspec.json.encode(job), self._revisions.get(job.id)
            if job.state in FINISHED:  # its runner's last write, whatever comes of it
                self._revisions.pop(job.id, None)
            try:
                revision = await (self.kv.create(key, data) if last is None else self.kv.update(key, data, last=last))
            except (KeyWrongLastSequenceError, BadRequestError) as exc:
                revision = await self._update_after_lost_ack(key, job, data, exc)
            if job.state not in FINISHED:
                self._revisions[job.id] = revision

    async def _update_after_lost_ack(self, key: str, job: Job, data: bytes, exc: Exception) -> int:
        """A compare-and-set refused: either another process marked the job interrupted (its record
        then says so) or one of this runner's own writes was stored but its acknowledgement never
        came (a publish timing out on a loaded server raises, yet the server kept it), leaving the
        revision recorded here one behind. Only the runner writes a queued or running record with its
        name (a reader writes `interrupted`), so such a record is this runner's own: written again on
        top of it. Anything else is `Superseded`."""
        try:
            entry = await self.kv.get(key)
            stored = _decode_job.decode(entry.value or b"")
        except (NotFoundError, msgspec.DecodeError):
            raise Superseded(f"evaluation job {job.id}: changed by another process ({exc})") from None
        if stored.runner != job.runner or stored.state in FINISHED or entry.revision is None:
            raise Superseded(f"evaluation job {job.id}: changed by another process ({exc}; it is {stored.state} "
                             "there)") from None
        log.warning("evaluation job %s: a write of this runner was stored unacknowledged (revision %d); "
                    "written again on top of it", job.id, entry.revision)
        try:
            return await self.kv.update(key, data, last=entry.revision)
        except (KeyWrongLastSequenceError, BadRequestError) as again:
            raise Superseded(f"evaluation job {job.id}: changed by another process ({again})") from None

    @_reachable
    async def write_results(self, job_id: str, ndjson: bytes) -> None:
        try:
            await self.obs.put(f"{job_id}.ndjson", ndjson)
        except APIError as exc:
            # the store's discard policy is `new`: full refuses the put (or the account's limit does)
            if "maximum bytes" not in str(exc) and "insufficient resources" not in str(exc):
                raise
            with contextlib.suppress(NatsError, TimeoutError):  # chunks a refused put left behind
                await self.obs.delete(f"{job_id}.ndjson")
            raise StoreFull(f"evaluation job {job_id}: results ({len(ndjson):,} bytes) not kept: the results store "
                            f"{RESULTS} is full (its max_bytes); finished jobs expire after "
                            f"{KEPT_S / 86400:.0f} days, or raise the evaluation jobs' max bytes setting") from None

    @_reachable
    async def prune(self, kept: int) -> list[str]:
        """Beyond `kept` finished jobs, the oldest (by when they finished) are deleted with their
        results and cancel flags; the ids deleted. Jobs queued or running are never touched."""
        keys = await live_keys(self.kv)  # not kv.keys(): controlplane.infra.kvwatch says why
        finished: list[Job] = []
        for key in keys:
            if key.startswith("job."):
                with contextlib.suppress(NotFoundError, msgspec.DecodeError):  # gone meanwhile; unreadable: get's
                    job = _decode_job.decode((await self.kv.get(key)).value or b"")
                    if job.state in FINISHED:
                        finished.append(job)
        finished.sort(key=lambda j: j.finished_at or j.created_at)
        gone = [j.id for j in finished[:max(0, len(finished) - kept)]]
        for job_id in gone:
            await self.kv.delete(f"job.{job_id}")
            await self.kv.delete(f"cancel.{job_id}")
            with contextlib.suppress(ObjectNotFoundError, NotFoundError):
                await self.obs.delete(f"{job_id}.ndjson")
        return gone

    @_reachable
    async def cancel_requested(self, job_id: str) -> bool:
        try:
            await self.kv.get(f"cancel.{job_id}")
        except NotFoundError:
            return False
        return True

    # ---- any process's reads --------------------------------------------------------------------
    @_reachable
    async def request_cancel(self, job_id: str) -> None:
        await self.kv.put(f"cancel.{job_id}", b"1")

    @_reachable
    async def get(self, job_id: str) -> Job | None:
        """The job as any process sees it: one whose runner went quiet is marked `interrupted`."""
        try:
            entry = await self.kv.get(f"job.{job_id}")
        except NotFoundError:  # never written, expired, or quarantined
            return None
        try:
            job = _decode_job.decode(entry.value or b"")
        except msgspec.DecodeError as exc:
            await self._quarantine(job_id, entry.value or b"", entry.revision, exc)
            return None
        if job.state in FINISHED or self._alive(job):
            return job
        quiet = time.time() - (job.heartbeat_at or job.created_at)
        job.state = "interrupted"
        job.error = f"its runner ({job.runner or 'a control-plane process'}) stopped: no heartbeat for {quiet:.0f} s"
        job.finished_at = time.time()
        try:
            await self.kv.update(f"job.{job_id}", msgspec.json.encode(job), last=entry.revision)
        except (KeyWrongLastSequenceError, BadRequestError):  # the runner (or another reader) wrote first
            return await self.get(job_id)
        log.warning("evaluation job %s: %s; marked interrupted", job_id, job.error)
        return job

    def _alive(self, job: Job) -> bool:
        return time.time() - (job.heartbeat_at or job.created_at) <= self.stale_s

    @_reachable
    async def listing(self) -> list[Job]:
        keys = await live_keys(self.kv)  # not kv.keys(): controlplane.infra.kvwatch says why
        jobs = [await self.get(key.removeprefix("job.")) for key in keys if key.startswith("job.")]
        return [j for j in jobs if j is not None]

    @_reachable
    async def results(self, job_id: str, into: Path) -> None:
        """The results written into `into` (0600) chunk by chunk: megabytes never held in memory at once."""
        try:
            with open_private(into, "wb") as fh:
                assert isinstance(fh, io.BufferedIOBase)  # "wb": a buffered writer
                await self.obs.get(f"{job_id}.ndjson", writeinto=fh)
        except ObjectNotFoundError:
            into.unlink(missing_ok=True)
            raise NotFound(f"evaluation job {job_id}: its results are gone (kept {KEPT_S / 86400:.0f} days)") from None
        except BaseException:
            into.unlink(missing_ok=True)
            raise

    async def _quarantine(self, job_id: str, raw: bytes, revision: int | None, exc: Exception) -> None:
        log.error("evaluation job %s: its record in %s is unreadable (%s); moved to quarantine.%s",
                  job_id, BUCKET, exc, job_id)
        try:
            await self.kv.put(f"quarantine.{job_id}", raw)
            await self.kv.delete(f"job.{job_id}", last=revision)
        except (NatsError, KeyValueError, TimeoutError) as err:
            log.error("evaluation job %s: not quarantined (%s); skipped", job_id, err)
