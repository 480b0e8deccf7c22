"""Impact analysis as a service: read the window from the replay store, build the candidate,
replay, report, and put the run in the audit trail.

Requests are msgspec structs (`ImpactRequest`); every client mistake (no candidate, a window and a
count both missing or out of range, Rego that does not compile, a Batch API replay) is a 4xx with
a message naming the field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
import msgspec

from bridge.kernel.config import Settings
from bridge.kernel.errors import BadRequest, Unprocessable
from controlplane.audit.records import AuditRecord, StoredRecord
from controlplane.impact.candidate import Candidate, CandidateSpec, build_candidate
from controlplane.impact.records import Recorded
from controlplane.impact.replay import Oracle, ReAsk, Report, decide_all, report
from controlplane.impact.store import ReplayStore
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
MAX_DECISIONS = 1_000_000
KEPT_REPORTS = 20
REDACT_FIELDS = ("text", "free_text", "prompt", "email", "phone", "full_name", "name", "address", "ssn", "password")

AuditAppend = Callable[[list[AuditRecord]], Awaitable[list[StoredRecord]]]
Progress = Callable[[int, int], Awaitable[None]]


class ImpactRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    candidate: CandidateSpec
    since_s: Annotated[float, msgspec.Meta(gt=0)] | None = None  # the window: decisions of the last N seconds
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_DECISIONS)] | None = None  # or the newest N (both: N within the window)
    via: Literal["online", "batch"] = "online"  # how judgments that changed are asked anew
    ask: bool = True  # False: changed judgments are not asked (they answer like an unreachable model: review)
    redact_fields: list[str] = msgspec.field(default_factory=lambda: list(REDACT_FIELDS))  # shown as [redacted], any depth


@dataclass
class Prepared:
    request: ImpactRequest
    candidate: Candidate
    decisions: list[Recorded]
    oracle: Oracle


def admin_record(action: str, outcome: str, details: dict[str, Any]) -> AuditRecord:
    """An operator's step in the audit trail (`source` admin, filed under `audit.admin.<outcome>`)."""
    return AuditRecord(source="admin", decision=outcome, details={"action": action, **details})


class ImpactService:
    def __init__(self, store: ReplayStore, policies: PolicyService, settings: Settings, reask: ReAsk,
                 audit: AuditAppend) -> None:
        self.store, self.policies, self.settings = store, policies, settings
        self.reask = reask
        self.audit = audit
        self.reports: deque[Report] = deque(maxlen=KEPT_REPORTS)  # newest last (the dashboard's)

    async def start(self) -> None:
        """Nothing to start (the store is a component of its own)."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def prepare(self, req: ImpactRequest) -> Prepared:
        """Everything that can be the client's mistake, checked before any replay starts: the request,
        the candidate (compiled), the window (read)."""
        self.store.check_enabled()
        if req.since_s is None and req.count is None:
            raise BadRequest("impact: give since_s (a window in seconds) or count (the newest N decisions)")
        if req.via == "batch":
            raise Unprocessable("impact: via=batch: the Batch API path is not available yet in this build; "
                                "use via=online")
        candidate = await anyio.to_thread.run_sync(build_candidate, req.candidate, self.policies)
        since = time.time() - req.since_s if req.since_s is not None else None
        decisions = await self.store.decisions(since, req.count or MAX_DECISIONS)  # a window holds at most the newest MAX
        oracle = Oracle(await self.store.judgments(), self.reask if req.ask else None)
        return Prepared(req, candidate, decisions, oracle)

    async def execute(self, prepared: Prepared, progress: Progress | None = None, who: str = "") -> Report:
        candidate, decisions, oracle = prepared.candidate, prepared.decisions, prepared.oracle
        evaluator = candidate.evaluator(self.policies, self.settings.bridge_url, oracle.transport)

        serving = asyncio.get_running_loop()

        async def report_progress(done: int) -> None:
            if progress is not None:
                await progress(done, len(decisions))

        async def step(done: int) -> None:  # on the replay's thread: progress is reported on the serving loop
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(report_progress(done), serving))

        started = time.perf_counter()
        try:
            # a thread and event loop of its own: the replay's WASM work never holds up the serving loop
            outcomes = await asyncio.to_thread(asyncio.run, decide_all(candidate, evaluator, oracle, decisions, step))
        finally:
            evaluator.close()
        found = report(candidate, decisions, outcomes, oracle, redact_fields=prepared.request.redact_fields,
                       started=started, via=prepared.request.via)
        self.reports.append(found)
        await self.audit([admin_record("impact", "other", {
            "report_id": found.id, "candidate": found.candidate, "candidate_revision": found.candidate_revision,
            "decisions": found.decisions, "changed": found.changed, "new_model_calls": found.model_calls.new,
            "by": who})])
        return found

    async def run(self, req: ImpactRequest, progress: Progress | None = None, who: str = "") -> Report:
        return await self.execute(await self.prepare(req), progress, who)
