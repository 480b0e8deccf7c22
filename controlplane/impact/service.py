"""Impact analysis as a service: read the window from the replay store, build the candidate,
replay, report, and put the run in the audit trail.

Requests are msgspec structs (`ImpactRequest`); every client mistake (no candidate, a window and a
count both missing or out of range, Rego that does not compile) is a 4xx with a message naming the
field. A replay `via=batch` runs in passes (`controlplane.impact.batched`): each pass replays the
window, the judgments it found neither recorded nor answered go out as one Batch API job per tier,
and the pass that finds none is the one reported.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import msgspec

from bridge.inference.batch import BatchProgress
from bridge.kernel.config import Settings
from bridge.kernel.errors import BadRequest, Unavailable
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.impact import helpers
from controlplane.impact.batched import BatchAsker, BatchReAsk, in_passes
from controlplane.impact.candidate import Candidate, CandidateSpec, build_candidate
from controlplane.impact.helpers import Helpers
from controlplane.impact.records import Judgment, Recorded
from controlplane.impact.replay import Oracle, Outcome, ReAsk, decide_all
from controlplane.impact.report import Report, report
from controlplane.impact.store import ReplayStore
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
MAX_DECISIONS = 1_000_000
KEPT_REPORTS = 20
REDACT_FIELDS = ("text", "free_text", "prompt", "email", "phone", "full_name", "name", "address", "ssn", "password")

AuditAppend = Callable[[list[AuditRecord]], Awaitable[list[StoredRecord]]]
Progress = Callable[[dict[str, Any]], Awaitable[None]]
"""Told `{"progress": {"done", "total"[, "pass"]}}` as decisions are replayed and, for a batch
replay, `{"batch": {"id", "status", "done", "failed", "total", "elapsed_s"}}` as a batch job moves."""


class ImpactRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    candidate: CandidateSpec
    since_s: Annotated[float, msgspec.Meta(gt=0)] | None = None  # the window: decisions of the last N seconds
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_DECISIONS)] | None = None  # or the newest N (both: N within the window)
    via: Literal["online", "batch"] = "online"  # how judgments that changed are asked anew
    ask: bool = True  # False: changed judgments are not asked (they answer like an unreachable model: review)
    redact_fields: list[str] = msgspec.field(default_factory=lambda: list(REDACT_FIELDS))  # shown as [redacted], any depth
    # helper processes for this replay: at most the configured GROQPOLICY_REPLAY_HELPERS (None: that many; 0: none)
    helpers: Annotated[int, msgspec.Meta(ge=0)] | None = None


@dataclass
class Prepared:
    request: ImpactRequest
    candidate: Candidate
    decisions: list[Recorded]
    judgments: dict[str, Judgment]
    reask: ReAsk | None  # None: changed judgments are not asked


def admin_record(action: str, outcome: str, details: dict[str, Any]) -> AuditRecord:
    """An operator's step in the audit trail (`source` admin, filed under `audit.admin.<outcome>`)."""
    return AuditRecord(source="admin", decision=outcome, details={"action": action, **details})


class ImpactService:
    def __init__(self, store: ReplayStore, policies: PolicyService, settings: Settings, reask: ReAsk,
                 audit: AuditAppend, batch: BatchAsker | None = None) -> None:
        self.store, self.policies, self.settings = store, policies, settings
        self.reask = reask
        self.batch = batch
        self.audit = audit
        self.reports: deque[Report] = deque(maxlen=KEPT_REPORTS)  # newest last (the dashboard's)
        self._warming: asyncio.Future[None] | None = None  # the replay helpers' fork server starting

    async def start(self) -> None:
        """The replay helpers' fork server starts in the background (the store is a component of its
        own): so the first long replay does not wait for its imports. One that dies later is started
        again by the next replay's first helper (multiprocessing checks it at every start)."""
        if self.settings.replay_helpers and self.store.enabled:
            self._warming = asyncio.get_running_loop().run_in_executor(None, helpers.warm)
            self._warming.add_done_callback(_told)

    async def stop(self) -> None:
        """Nothing to stop."""

    async def prepare(self, req: ImpactRequest) -> Prepared:
        """Everything that can be the client's mistake, checked before any replay starts: the request,
        the candidate (compiled), the window (read)."""
        self.store.check_enabled()
        if req.since_s is None and req.count is None:
            raise BadRequest("impact: give since_s (a window in seconds) or count (the newest N decisions)")
        reask: ReAsk | None = None
        if req.ask:
            if req.via == "batch":
                if self.batch is None:
                    raise Unavailable("impact: via=batch: this control plane has no Batch API client; use via=online")
                reask = BatchReAsk(self.batch.require())  # 503 without a Groq endpoint
            else:
                reask = self.reask
        candidate = await anyio.to_thread.run_sync(build_candidate, req.candidate, self.policies)
        since = time.time() - req.since_s if req.since_s is not None else None
        decisions = await self.store.decisions(since, req.count or MAX_DECISIONS)  # a window holds at most the newest MAX
        return Prepared(req, candidate, decisions, await self.store.judgments(), reask)

    async def _helpers(self, prepared: Prepared, oracle: Oracle) -> Helpers | None:
        """Helper processes for this replay when it is long enough (`controlplane.impact.helpers`);
        None when it is not, or they cannot be made (the replay then runs on this process alone)."""
        count, decisions = self.settings.replay_helpers, prepared.decisions
        if prepared.request.helpers is not None:
            count = min(count, prepared.request.helpers)  # a client may ask for fewer, never more
        if not count or len(decisions) < self.settings.replay_helpers_from:
            return None
        candidate = prepared.candidate
        try:
            return await asyncio.to_thread(
                Helpers, count, archive=candidate.archive, key=self.policies.bundler.publisher.key.verification_key(),
                bridge_url=self.settings.bridge_url, records=candidate.records, replies=dict(oracle.replies),
                final_misses=oracle.reask is None)
        except Exception:  # logged: without helpers the replay is slower, not wrong
            log.warning("impact: no replay helpers (this process replays alone)", exc_info=True)
            return None

    async def execute(self, prepared: Prepared, progress: Progress | None = None, who: str = "") -> Report:
        started = time.perf_counter()
        reask = prepared.reask
        if isinstance(reask, BatchReAsk):
            oracle, outcomes = await self._batch_passes(prepared, reask, progress)
        else:
            oracle = Oracle(prepared.judgments, reask)
            outcomes = await self._replay(prepared, oracle, progress)
        found = report(prepared.candidate, prepared.decisions, outcomes, oracle,
                       redact_fields=prepared.request.redact_fields, started=started, via=prepared.request.via)
        if isinstance(reask, BatchReAsk):  # its judgments' latency is the jobs' (the last pass reads memory)
            found.model_calls.batches = reask.batches
            found.latency.new_call_ms_p50 = round(statistics.median(reask.waited_ms), 2) if reask.waited_ms else 0.0
        self.reports.append(found)
        await self.audit([admin_record("impact", "other", {
            "report_id": found.id, "candidate": found.candidate, "candidate_revision": found.candidate_revision,
            "decisions": found.decisions, "changed": found.changed, "new_model_calls": found.model_calls.new,
            "via": found.model_calls.via, "batches": found.model_calls.batches, "by": who})])
        return found

    async def _replay(self, prepared: Prepared, oracle: Oracle, progress: Progress | None,
                      number: int = 0) -> list[Outcome]:
        """One pass over the window (`number`: the pass of a batch replay, told to `progress`)."""
        candidate, decisions = prepared.candidate, prepared.decisions
        evaluator = candidate.evaluator(self.policies, self.settings.bridge_url, oracle.transport, send_memo=oracle.memo)
        serving = asyncio.get_running_loop()

        async def report_progress(done: int) -> None:
            if progress is not None:
                line: dict[str, Any] = {"done": done, "total": len(decisions)}
                if number:
                    line["pass"] = number
                await progress({"progress": line})

        async def step(done: int) -> None:  # on the replay's thread: progress is reported on the serving loop
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(report_progress(done), serving))

        if number > 1:  # the stream's first line announced the first pass
            await report_progress(0)
        aides = None
        try:
            aides = await self._helpers(prepared, oracle)
            # a thread and event loop of its own: the replay's WASM work never holds up the serving loop
            return await asyncio.to_thread(asyncio.run, decide_all(candidate, evaluator, oracle, decisions, step, aides))
        finally:
            evaluator.close()
            if aides is not None:
                await asyncio.to_thread(aides.close)

    async def _batch_passes(self, prepared: Prepared, reask: BatchReAsk,
                            progress: Progress | None) -> tuple[Oracle, list[Outcome]]:
        """Replay, ask what was missing as batches, replay again, until a pass misses nothing; that
        pass's oracle (which counts the batch's answers as asked anew, at their batch cost) and outcomes."""
        told: list[asyncio.Future[None]] = []

        def moved(p: BatchProgress) -> None:  # the batch client's callback is not a coroutine
            if progress is not None:
                told.append(asyncio.ensure_future(progress({"batch": {
                    "id": p.batch_id, "status": p.status, "done": p.done, "failed": p.failed, "total": p.total,
                    "elapsed_s": round(p.elapsed_s, 3)}})))

        async def one_pass(number: int) -> tuple[Oracle, list[Outcome]]:
            await asyncio.gather(*told)  # the last jobs' progress is told before this pass's
            told.clear()
            oracle = Oracle(prepared.judgments, reask)
            return oracle, await self._replay(prepared, oracle, progress, number)

        return await in_passes(reask, one_pass, moved)

    async def run(self, req: ImpactRequest, progress: Progress | None = None, who: str = "") -> Report:
        return await self.execute(await self.prepare(req), progress, who)


def _told(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("impact: the replay helpers' fork server did not start: %s", done.exception())
