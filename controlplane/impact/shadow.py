"""Shadow mode: a candidate evaluated beside a live policy on a sample of real traffic.

The live path pays one `random()` and one append to a bounded deque per decision (`observe`, called
by the decision recorder after the audit record is written); when the deque is full the sample is
dropped and counted. Everything else happens on a thread of its own, with an event loop of its own
(`ShadowThread`): a few times a second it takes what gathered and decides it again with each shadow's
pipeline (the candidate's own evaluator), so the shadow's WASM work and its model calls are never
on a caller's clock, nor on the event loop that serves requests. Model calls go to the live workers
(a shadow sees the model as live traffic would), not to the replay store.

A divergence (the shadow decides otherwise) is kept with both decisions, both revisions and the
input's digest, never the input: the latest in memory, every one in the replay store. `promote` applies the candidate as a policy write and `discard`
drops it; both are audit records, and a promotion above `GROQPOLICY_SHADOW_MAX_DIVERGENCE` is
refused (and the refusal recorded) unless forced (and the force recorded).

Shadows outlive the process: each one's candidate, share and counters are kept in a KV bucket
(`controlplane.impact.shadow_state`) and restored at start, compiled again against the policies as
they are then. One that can no longer be restored (its candidate no longer compiles, its live policy
is gone or inactive) is reported (`unrestored`, the log, the dashboard) and left in the bucket until
it is discarded; it never stops the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from typing import Any

import msgspec
import nats.errors

from bridge.kernel.config import Settings
from bridge.kernel.errors import BadRequest, ConfigError, Conflict, GroqPolicyError, NotFound
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from bridge.opawasm import InferTransport, WasmEvaluator
from controlplane.audit.records import digest
from controlplane.evaluation.interfaces import AskModel
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.impact.candidate import Candidate, CandidateSpec, build_candidate
from controlplane.impact.records import Divergence
from controlplane.impact.service import AuditAppend, admin_record
from controlplane.impact.shadow_state import SAVE_S, SavedShadow, ShadowBucket
from controlplane.impact.shadow_thread import ShadowThread
from controlplane.impact.store import ReplayStore
from controlplane.metrics.recorders import forget_shadow, record_shadow
from controlplane.policies.schemas import PolicyRecord, PolicyUpdate
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
MAX_QUEUED = 10_000
KEPT_DIVERGENCES = 100
DEFAULT_SAMPLE = 0.1  # the share of live decisions a shadow is evaluated on, unless it asks for another


class ShadowSummary(msgspec.Struct):
    rule_id: uuid.UUID
    candidate: str
    candidate_revision: str
    started_at: float
    sample: float
    compared: int
    diverged: int
    errors: int
    divergence_rate: float
    max_divergence: float
    divergences: list[Divergence]


class _Shadow:
    def __init__(self, rule_id: uuid.UUID, candidate: Candidate, evaluator: WasmEvaluator, sample: float,
                 saved: SavedShadow | None = None) -> None:
        self.rule_id, self.candidate, self.evaluator, self.sample = rule_id, candidate, evaluator, sample
        self.pipeline: Pipeline | None = None  # made on the shadow thread's loop
        self.started_at = saved.started_at if saved else time.time()
        self.compared, self.diverged, self.errors = (saved.compared, saved.diverged, saved.errors) if saved else (0, 0, 0)
        self.by = saved.by if saved else ""
        self.saved_counts = (self.compared, self.diverged, self.errors)  # as the bucket holds them
        self.divergences: deque[Divergence] = deque(maxlen=KEPT_DIVERGENCES)
        self.types = {r.policy_type for r in candidate.records if r.rule_id in candidate.changed}

    def records(self) -> list[PolicyRecord]:
        return self.candidate.records

    @property
    def rate(self) -> float:
        return self.diverged / self.compared if self.compared else 0.0

    def applies(self, policy_types: list[str]) -> bool:
        return not policy_types or bool(self.types.intersection(policy_types))

    def saved(self) -> SavedShadow:
        return SavedShadow(spec=self.candidate.spec, sample=self.sample, started_at=self.started_at,
                           compared=self.compared, diverged=self.diverged, errors=self.errors, by=self.by)


Item = tuple[EvaluateResponse, dict[str, Any], str, list[str], str]


class ShadowMode:
    def __init__(self, policies: PolicyService, settings: Settings, transport: InferTransport, ask_model: AskModel,
                 audit: AuditAppend, store: ReplayStore | None = None, bucket: ShadowBucket | None = None) -> None:
        if not 0 <= settings.shadow_max_divergence <= 1:
            raise ConfigError(f"GROQPOLICY_SHADOW_MAX_DIVERGENCE={settings.shadow_max_divergence}: expected 0 to 1")
        self.policies, self.settings = policies, settings
        self.transport, self.ask_model, self.audit = transport, ask_model, audit
        self.store = store  # where divergences are kept beyond this process (the replay store)
        self.shadows: dict[uuid.UUID, _Shadow] = {}
        self.queue: deque[Item] = deque()
        self.dropped = 0
        self.sample = 0.0  # the largest share any shadow asks for: what observe() takes
        self._worker: ShadowThread | None = None
        self.bucket = bucket  # where shadows are kept across restarts (None: this process only)
        self.unrestored: dict[str, str] = {}  # rule id -> why its saved shadow could not be restored
        self._saver: asyncio.Task[None] | None = None

    # -- the live path's part (any thread, never blocks) ----------------------------------------------
    def observe(self, response: EvaluateResponse, input_context: dict[str, Any], *, tier: str,
                policy_types: list[str], constitutional_hash: str) -> None:
        if not self.shadows or random.random() >= self.sample:
            return
        if len(self.queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self.queue.append((response, input_context, tier, policy_types, constitutional_hash))

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Restore the saved shadows (the shadow thread starts with the first one)."""
        if self.bucket is None:
            return
        self._saver = asyncio.create_task(self._save_counters(), name="shadow-counters")
        try:
            saved = await self.bucket.load()
        except (GroqPolicyError, nats.errors.Error) as exc:
            log.error("shadows: the saved shadows could not be read (%s); starting without them", exc)
            self.unrestored["*"] = f"the bucket could not be read: {exc}"
            return
        for rule_id, entry in saved.items():
            await self._restore(rule_id, entry)

    async def _restore(self, rule_id: str, entry: SavedShadow | None) -> None:
        try:
            if entry is None:
                raise BadRequest("its saved value does not read")
            await self._add(uuid.UUID(rule_id), entry.spec, entry.sample, entry)
            log.info("shadow of %s restored (%s)", rule_id, self.shadows[uuid.UUID(rule_id)].candidate.description)
        except (GroqPolicyError, ValueError) as exc:  # the candidate no longer compiles, the policy is gone, ...
            why = getattr(exc, "message", None) or str(exc)
            self.unrestored[rule_id] = why
            log.error("shadow of %s could not be restored: %s (discard it to remove it)", rule_id, why)

    async def _save_counters(self) -> None:
        while True:
            await asyncio.sleep(SAVE_S)
            await self._save_moved()

    async def _save_moved(self) -> None:
        for shadow in list(self.shadows.values()):
            counts = (shadow.compared, shadow.diverged, shadow.errors)
            # promoted or discarded while an earlier save was awaited: saving it now would bring it back
            gone = self.shadows.get(shadow.rule_id) is not shadow
            if counts != shadow.saved_counts and self.bucket is not None and not gone:
                try:
                    await self.bucket.save(shadow.rule_id, shadow.saved())
                    shadow.saved_counts = counts
                except (GroqPolicyError, nats.errors.Error) as exc:  # tried again next round
                    log.warning("shadow of %s: counters not saved (%s)", shadow.rule_id, exc)

    async def stop(self) -> None:
        saver, self._saver = self._saver, None
        if saver is not None:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            await self._save_moved()  # the counters as they are now: the next start goes on from them
        worker, self._worker = self._worker, None
        for shadow in self.shadows.values():  # kept in the bucket: the next start restores them
            if worker is not None:
                worker.retire(shadow)
            else:
                shadow.evaluator.close()
        self.shadows.clear()
        if worker is not None:
            await asyncio.to_thread(worker.stop)

    # -- the operator's side ----------------------------------------------------------------------------
    async def begin(self, spec: CandidateSpec, sample: float | None, who: str = "") -> ShadowSummary:
        if spec.rule_id is None:
            raise BadRequest("shadow: rule_id (the live policy the candidate shadows) is required")
        if spec.rule_id in self.shadows:
            raise Conflict(f"shadow: policy {spec.rule_id} has a shadow already (promote or discard it first)")
        if spec.bundle_dir is not None:
            raise BadRequest("shadow: a bundle_dir candidate cannot be shadowed (use `groqpolicy impact` for it)")
        shadow = await self._add(spec.rule_id, spec, DEFAULT_SAMPLE if sample is None else sample, None)
        shadow.by = who
        candidate = shadow.candidate
        if self.bucket is not None:
            try:
                await self.bucket.save(spec.rule_id, shadow.saved())
            except BaseException:
                self._drop(spec.rule_id)
                raise
        self.unrestored.pop(str(spec.rule_id), None)  # a new shadow takes the unrestored one's place
        await self.audit([admin_record("shadow", "other", {"rule_id": str(spec.rule_id), "candidate": candidate.description,
                                                            "candidate_revision": candidate.revision, "by": who})])
        return self.summary(shadow)

    async def _add(self, rule_id: uuid.UUID, spec: CandidateSpec, sample: float, saved: SavedShadow | None) -> _Shadow:
        live = await self.policies.get(rule_id)
        if not live.is_active:
            raise Conflict(f"shadow: policy {rule_id} is not active (a shadow runs beside a live policy)")
        candidate = await asyncio.to_thread(build_candidate, spec, self.policies)
        evaluator = candidate.evaluator(self.policies, self.settings.bridge_url, self.transport)
        shadow = _Shadow(rule_id, candidate, evaluator, sample, saved)
        if self._worker is None:
            self._worker = ShadowThread(self)
        self.shadows[rule_id] = shadow
        self.sample = max(s.sample for s in self.shadows.values())
        return shadow

    def summary(self, shadow: _Shadow) -> ShadowSummary:
        return ShadowSummary(rule_id=shadow.rule_id, candidate=shadow.candidate.description,
                             candidate_revision=shadow.candidate.revision, started_at=shadow.started_at,
                             sample=shadow.sample, compared=shadow.compared, diverged=shadow.diverged,
                             errors=shadow.errors, divergence_rate=round(shadow.rate, 6),
                             max_divergence=self.settings.shadow_max_divergence, divergences=list(shadow.divergences))

    def summaries(self) -> list[ShadowSummary]:
        return [self.summary(s) for s in self.shadows.values()]

    def _get(self, rule_id: uuid.UUID) -> _Shadow:
        found = self.shadows.get(rule_id)
        if found is None:
            raise NotFound(f"shadow: policy {rule_id} has no shadow")
        return found

    async def promote(self, rule_id: uuid.UUID, force: bool = False, who: str = "") -> dict[str, Any]:
        shadow = self._get(rule_id)
        facts = {"rule_id": str(rule_id), "candidate": shadow.candidate.description, "compared": shadow.compared,
                 "diverged": shadow.diverged, "divergence_rate": round(shadow.rate, 6),
                 "max_divergence": self.settings.shadow_max_divergence, "forced": force, "by": who}
        above = shadow.rate > self.settings.shadow_max_divergence
        if above and not force:
            await self.audit([admin_record("promote", "deny", {**facts, "refused": "above the divergence threshold"})])
            raise Conflict(f"shadow of {rule_id}: divergence rate {shadow.rate:.2%} is above the "
                           f"{self.settings.shadow_max_divergence:.2%} allowed (GROQPOLICY_SHADOW_MAX_DIVERGENCE); "
                           "promotion refused (force it to promote anyway: the force is recorded)")
        await self._apply(shadow.candidate.spec)
        self._drop(rule_id)
        await self._unsave(rule_id)
        await self.audit([admin_record("promote", "allow", facts)])
        return {"promoted": True, **facts}

    async def discard(self, rule_id: uuid.UUID, who: str = "") -> dict[str, Any]:
        why = self.unrestored.get(str(rule_id))
        if why is not None and rule_id not in self.shadows:  # a saved shadow that could not be restored
            await self._unsave(rule_id)
            del self.unrestored[str(rule_id)]
            gone: dict[str, Any] = {"rule_id": str(rule_id), "unrestored": why, "by": who}
            await self.audit([admin_record("discard", "other", gone)])
            return {"discarded": True, **gone}
        shadow = self._get(rule_id)
        self._drop(rule_id)
        await self._unsave(rule_id)
        facts = {"rule_id": str(rule_id), "candidate": shadow.candidate.description, "compared": shadow.compared,
                 "diverged": shadow.diverged, "divergence_rate": round(shadow.rate, 6), "by": who}
        await self.audit([admin_record("discard", "other", facts)])
        return {"discarded": True, **facts}

    async def _apply(self, spec: CandidateSpec) -> None:
        """The candidate as policy writes (each compiled, stored and activated as any write is)."""
        if spec.candidate_id is not None:
            await self.policies.update(spec.candidate_id, PolicyUpdate(is_active=True, constitutional_hash=CONSTITUTIONAL_HASH))
            if spec.rule_id is not None:
                await self.policies.update(spec.rule_id, PolicyUpdate(is_active=False, constitutional_hash=CONSTITUTIONAL_HASH))
        elif spec.rule_id is not None and spec.opa_policy is not None:
            await self.policies.update(spec.rule_id, PolicyUpdate(opa_policy=spec.opa_policy,
                                                                  constitutional_hash=CONSTITUTIONAL_HASH))

    async def _unsave(self, rule_id: uuid.UUID) -> None:
        if self.bucket is not None:
            await self.bucket.remove(rule_id)

    def _drop(self, rule_id: uuid.UUID) -> None:
        shadow = self.shadows.pop(rule_id)
        self.sample = max((s.sample for s in self.shadows.values()), default=0.0)
        forget_shadow(str(rule_id))
        if self._worker is not None:
            self._worker.retire(shadow)
        else:
            shadow.evaluator.close()

    # -- on the shadow thread -------------------------------------------------------------------------------
    async def compare(self, items: list[Item]) -> None:
        groups: dict[tuple[Any, ...], list[Item]] = {}
        for item in items:
            groups.setdefault((tuple(item[3]), item[2], item[4]), []).append(item)
        for shadow in list(self.shadows.values()):
            if shadow.pipeline is None:
                shadow.pipeline = Pipeline(shadow.evaluator, shadow.records, ask_model=self.ask_model)
            share = shadow.sample / self.sample if self.sample else 0.0  # of what observe() took
            for (types, tier, chash), group in groups.items():
                taken = [i for i in group if share >= 1 or random.random() < share]
                if taken and shadow.applies(list(types)):
                    await self._compare(shadow, list(types), tier, chash, taken)

    async def _compare(self, shadow: _Shadow, types: list[str], tier: str, chash: str, group: list[Item]) -> None:
        assert shadow.pipeline is not None
        key = str(shadow.rule_id)
        try:
            found = await shadow.pipeline.decide_many([i[1] for i in group], policy_types=types, tier=tier,
                                                      constitutional_hash=chash, explain=False)
        except Exception:
            shadow.errors += len(group)
            log.warning("shadow of %s: evaluation failed", key, exc_info=True)
            record_shadow(key, "error", shadow.rate)
            return
        for item, theirs in zip(group, found, strict=True):
            live = item[0]
            shadow.compared += 1
            if theirs.decision != live.decision:
                shadow.diverged += 1
                seen = Divergence(rule_id=key, evaluation_id=str(live.evaluation_id), input_sha256=digest(item[1]),
                                  live=live.decision, shadow=theirs.decision, live_revision=live.bundle_revision,
                                  shadow_revision=theirs.bundle_revision, at=time.time())
                shadow.divergences.append(seen)
                if self.store is not None:
                    self.store.submit_divergence(seen)
            record_shadow(key, "diverged" if theirs.decision != live.decision else "same", shadow.rate)
