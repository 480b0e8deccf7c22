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

Shadows are the deployment's, not one process's: each one's definition and each process's
counters are kept in a KV bucket (`controlplane.impact.shadow_state`) that every control-plane
process watches (`controlplane.impact.shadow_sync`). A shadow begun on any process is compiled and
compared on all of them (and again at every start, against the policies as they are then); one
promoted or discarded on any process stops on all of them, audited once by the process that was
asked. Counts, rates and the promotion threshold are the sum over every process's counters. One
that can no longer be restored (its candidate no longer compiles, its live policy is gone or
inactive) is reported (`unrestored`, the log, the dashboard) and left in the bucket until it is
discarded; it never stops the start.
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
from bridge.opawasm import InferTransport
from controlplane.audit.records import digest
from controlplane.evaluation.interfaces import AskModel
from controlplane.evaluation.pipeline import Pipeline
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.impact.candidate import CandidateSpec, build_candidate
from controlplane.impact.records import Divergence
from controlplane.impact.service import AuditAppend, admin_record
from controlplane.impact.shadow_entry import ShadowEntry, parse_uuid
from controlplane.impact.shadow_state import SAVE_S, Counts, SavedShadow, ShadowBucket
from controlplane.impact.shadow_sync import ShadowWatch
from controlplane.impact.shadow_thread import ShadowThread
from controlplane.impact.store import ReplayStore
from controlplane.metrics.recorders import forget_shadow, record_shadow, record_shadow_ratio
from controlplane.policies.schemas import PolicyUpdate
from controlplane.policies.service import PolicyService

log = logging.getLogger(__name__)
MAX_QUEUED = 10_000
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


Item = tuple[EvaluateResponse, dict[str, Any], str, list[str], str]


class ShadowMode:
    def __init__(self, policies: PolicyService, settings: Settings, transport: InferTransport, ask_model: AskModel,
                 audit: AuditAppend, store: ReplayStore | None = None, bucket: ShadowBucket | None = None) -> None:
        if not 0 <= settings.shadow_max_divergence <= 1:
            raise ConfigError(f"GROQPOLICY_SHADOW_MAX_DIVERGENCE={settings.shadow_max_divergence}: expected 0 to 1")
        self.policies, self.settings = policies, settings
        self.transport, self.ask_model, self.audit = transport, ask_model, audit
        self.store = store  # where divergences are kept beyond this process (the replay store)
        self.shadows: dict[uuid.UUID, ShadowEntry] = {}
        self.queue: deque[Item] = deque()
        self.dropped = 0
        self.sample = 0.0  # the largest share any shadow asks for: what observe() takes
        self._worker: ShadowThread | None = None
        # where shadows are kept across restarts. The service always gives one, so a process without
        # NATS answers 503 to begin/promote/discard: a shadow kept in one process's memory would
        # differ from the deployment's. None (tests only) keeps shadows in this process alone.
        self.bucket = bucket
        self.unrestored: dict[str, str] = {}  # rule id -> why its saved shadow could not be restored
        self._saver: asyncio.Task[None] | None = None
        self.process = uuid.uuid4().hex[:16]  # this process's counters' key; a new one at every start
        self.watch = ShadowWatch(bucket, self) if bucket is not None else None
        # counters seen before their shadow was compiled here: rule id -> process -> counts
        self.pending: dict[str, dict[str, Counts]] = {}

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
        """Restore the saved shadows and follow the bucket (the shadow thread starts with the first one)."""
        if self.bucket is None or self.watch is None:
            return
        self._saver = asyncio.create_task(self._save_counters(), name="shadow-counters")
        try:
            await self.watch.start()
        except (GroqPolicyError, nats.errors.Error) as exc:
            log.error("shadows: the saved shadows could not be read (%s); starting without them", exc)
            self.unrestored["*"] = f"the bucket could not be read: {exc}"

    async def resync(self) -> None:
        """After a reconnect (a KV watch does not survive a server restart)."""
        if self.watch is not None:
            await self.watch.resync()

    # -- what the watch brings (on the serving loop) --------------------------------------------------
    async def defined(self, rule_id: str, entry: SavedShadow | None) -> None:
        """A shadow's definition, as saved by this process or another one."""
        known = self.shadows.get(parse_uuid(rule_id) or uuid.UUID(int=0))
        if known is not None and entry is not None and known.id == entry.id:
            return  # begun here, or already compiled here
        if known is not None:
            self._drop(known.rule_id)  # replaced by a newer shadow of the same policy
        await self._restore(rule_id, entry)

    def ended(self, rule_id: str) -> None:
        """A definition deleted (promoted or discarded, here or on another process)."""
        self.unrestored.pop(rule_id, None)
        self.pending.pop(rule_id, None)
        found = parse_uuid(rule_id)
        if found is not None and found in self.shadows:
            self._drop(found)
            log.info("shadow of %s ended on another control-plane process", rule_id)

    def counted(self, rule_id: str, process: str, counts: Counts | None) -> None:
        """Another process's counters (None: removed with their shadow)."""
        if process == self.process:
            return
        shadow = self.shadows.get(parse_uuid(rule_id) or uuid.UUID(int=0))
        if counts is None:
            self.pending.get(rule_id, {}).pop(process, None)
            if shadow is not None:
                shadow.peers.pop(process, None)
        elif shadow is not None and counts.shadow == shadow.id:
            shadow.peers[process] = counts
            record_shadow_ratio(rule_id, shadow.rate)
        elif shadow is None:
            self.pending.setdefault(rule_id, {})[process] = counts

    async def _restore(self, rule_id: str, entry: SavedShadow | None) -> None:
        try:
            if entry is None:
                raise BadRequest("its saved value does not read")
            shadow = await self._add(uuid.UUID(rule_id), entry.spec, entry.sample, entry)
            shadow.peers = {p: c for p, c in self.pending.pop(rule_id, {}).items() if c.shadow == shadow.id}
            record_shadow_ratio(rule_id, shadow.rate)
            self.unrestored.pop(rule_id, None)
            log.info("shadow of %s restored (%s)", rule_id, shadow.candidate.description)
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
                    await self.bucket.save_counts(shadow.rule_id, self.process, Counts(
                        shadow=shadow.id, compared=counts[0], diverged=counts[1], errors=counts[2]))
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
        if self.watch is not None:
            await self.watch.stop()
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
                if str(spec.rule_id) in self.unrestored:  # a new shadow takes the unrestored one's place
                    await self.bucket.save(spec.rule_id, shadow.saved())
                else:  # of two processes beginning a shadow of one policy at once, one wins
                    await self.bucket.create(spec.rule_id, shadow.saved())
            except BaseException:
                self._drop(spec.rule_id, shadow)
                raise
        self.unrestored.pop(str(spec.rule_id), None)  # a new shadow takes the unrestored one's place
        await self.audit([admin_record("shadow", "other", {"rule_id": str(spec.rule_id), "candidate": candidate.description,
                                                            "candidate_revision": candidate.revision, "by": who})])
        return self.summary(shadow)

    async def _add(self, rule_id: uuid.UUID, spec: CandidateSpec, sample: float, saved: SavedShadow | None) -> ShadowEntry:
        live = await self.policies.get(rule_id)
        if not live.is_active:
            raise Conflict(f"shadow: policy {rule_id} is not active (a shadow runs beside a live policy)")
        candidate = await asyncio.to_thread(build_candidate, spec, self.policies)
        evaluator = candidate.evaluator(self.policies, self.settings.bridge_url, self.transport)
        shadow = ShadowEntry(rule_id, candidate, evaluator, sample, saved)
        if self._worker is None:
            self._worker = ShadowThread(self)
        if rule_id in self.shadows:  # defined meanwhile (through the watch): the newer one stays
            self._drop(rule_id)
        self.shadows[rule_id] = shadow
        self.sample = max(s.sample for s in self.shadows.values())
        return shadow

    def summary(self, shadow: ShadowEntry) -> ShadowSummary:
        compared, diverged, errors = shadow.totals()
        return ShadowSummary(rule_id=shadow.rule_id, candidate=shadow.candidate.description,
                             candidate_revision=shadow.candidate.revision, started_at=shadow.started_at,
                             sample=shadow.sample, compared=compared, diverged=diverged,
                             errors=errors, divergence_rate=round(diverged / compared if compared else 0.0, 6),
                             max_divergence=self.settings.shadow_max_divergence, divergences=list(shadow.divergences))

    def summaries(self) -> list[ShadowSummary]:
        return [self.summary(s) for s in self.shadows.values()]

    def _get(self, rule_id: uuid.UUID) -> ShadowEntry:
        found = self.shadows.get(rule_id)
        if found is None:
            raise NotFound(f"shadow: policy {rule_id} has no shadow")
        return found

    async def promote(self, rule_id: uuid.UUID, force: bool = False, who: str = "") -> dict[str, Any]:
        shadow = self._get(rule_id)
        facts = {**self._facts(shadow), "max_divergence": self.settings.shadow_max_divergence, "forced": force, "by": who}
        above = shadow.rate > self.settings.shadow_max_divergence
        if above and not force:
            await self.audit([admin_record("promote", "deny", {**facts, "refused": "above the divergence threshold"})])
            raise Conflict(f"shadow of {rule_id}: divergence rate {shadow.rate:.2%} is above the "
                           f"{self.settings.shadow_max_divergence:.2%} allowed (GROQPOLICY_SHADOW_MAX_DIVERGENCE); "
                           "promotion refused (force it to promote anyway: the force is recorded)")
        # The definition goes first: if it cannot be removed (503), nothing is applied and the shadow
        # stays everywhere. Removed after the write instead, a failure would leave it in the bucket,
        # and a later promotion (here, on another process, after a restart) would apply the old
        # candidate over whatever was written since.
        await self._unsave(rule_id, shadow)
        if self.shadows.get(rule_id) is shadow:  # the watch may have ended it meanwhile
            self._drop(rule_id)
        await self._apply(shadow.candidate.spec)
        await self.audit([admin_record("promote", "allow", facts)])  # once the write succeeded
        return {"promoted": True, **facts}

    async def discard(self, rule_id: uuid.UUID, who: str = "") -> dict[str, Any]:
        why = self.unrestored.get(str(rule_id))
        if why is not None and rule_id not in self.shadows:  # a saved shadow that could not be restored
            await self._unsave(rule_id)
            self.unrestored.pop(str(rule_id), None)  # the watch may have taken it off already
            gone: dict[str, Any] = {"rule_id": str(rule_id), "unrestored": why, "by": who}
            await self.audit([admin_record("discard", "other", gone)])
            return {"discarded": True, **gone}
        shadow = self._get(rule_id)
        self._drop(rule_id)
        await self._unsave(rule_id, shadow)
        facts = {**self._facts(shadow), "by": who}
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

    @staticmethod
    def _facts(shadow: ShadowEntry) -> dict[str, Any]:
        compared, diverged, _ = shadow.totals()
        return {"rule_id": str(shadow.rule_id), "candidate": shadow.candidate.description, "compared": compared,
                "diverged": diverged, "divergence_rate": round(shadow.rate, 6)}

    async def _unsave(self, rule_id: uuid.UUID, shadow: ShadowEntry | None = None) -> None:
        if self.bucket is not None:  # the definition, then every process's counters this one has seen
            seen = {self.process, *(shadow.peers if shadow else ()), *self.pending.pop(str(rule_id), {})}
            await self.bucket.remove(rule_id, tuple(sorted(seen)))

    def _drop(self, rule_id: uuid.UUID, shadow: ShadowEntry | None = None) -> None:
        """Stop comparing `rule_id`'s shadow (only `shadow`, when given: another may have replaced it)."""
        if shadow is not None and self.shadows.get(rule_id) is not shadow:
            self._retire(shadow)
            return
        shadow = self.shadows.pop(rule_id)
        self.sample = max((s.sample for s in self.shadows.values()), default=0.0)
        forget_shadow(str(rule_id))
        self._retire(shadow)

    def _retire(self, shadow: ShadowEntry) -> None:
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

    async def _compare(self, shadow: ShadowEntry, types: list[str], tier: str, chash: str, group: list[Item]) -> None:
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

