"""Where the replay store and shadow mode see live traffic, without the evaluation path knowing.

- `ObservingRecorder` is the pipeline's decision recorder: it hands each decision to the audit
  trail first (which must succeed, or the decision is not served), then, at the event loop's next
  turn (once the response is on its way), to the replay store and to the observers (shadow mode).
  Those two only queue and return: never on the caller's clock, and a failure of theirs never
  touches the decision.
- `tap_transport` / `tap_ask` wrap the two ways a model is asked (a policy's `http.send` on a
  worker thread; the pipeline's own model stage on the loop) and file each answer as a judgment,
  keyed by its exact request, once per key and hour.
- `AgentDecisions` files OPA agents' decision-log events with the judgments of their
  `nd_builtin_cache`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from bridge.opawasm import InferTransport
from controlplane.audit.ingest import decision_of
from controlplane.evaluation.interfaces import AskModel, DecisionRecorder, Source
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.impact.records import Judgment, Recorded, agent_judgments, judgment_key, strictest_by_type
from controlplane.impact.store import ReplayStore
from controlplane.policies import rego
from controlplane.policies.schemas import PolicyRecord

log = logging.getLogger(__name__)
SEEN_FOR_S = 3600.0  # a judgment already filed within this long is not filed again
SEEN_MAX = 100_000


class Observer(Protocol):
    """Sees each served decision after it is recorded; must only queue (shadow mode)."""

    def observe(self, response: EvaluateResponse, input_context: dict[str, Any], *, tier: str,
                policy_types: list[str], constitutional_hash: str) -> None: ...


def recorded(responses: list[EvaluateResponse], contexts: list[Any], *, source: str, tier: str,
             policy_types: list[str]) -> list[Recorded]:
    """The replay store's entries for decisions made together (one request's). What they share is
    made once (time, requested types, the ids' text in one call), and so is each distinct set of
    per-type decisions: a batch's contexts mostly decide alike. The entries are only encoded, never
    changed, so they may share those objects."""
    ts = time.time()
    types = list(policy_types)
    ids = msgspec.to_builtins([r.evaluation_id for r in responses])
    by_types: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    out = []
    for response, ctx, evaluation_id in zip(responses, contexts, ids, strict=True):
        pairs = tuple([(r.policy_type, r.decision) for r in response.policy_results])
        by_type = by_types.get(pairs)
        if by_type is None:
            by_type = by_types[pairs] = strictest_by_type(list(pairs))
        out.append(Recorded(
            id=evaluation_id, ts=ts, source=source, input=ctx, decision=response.decision,
            revision=response.bundle_revision, tier=tier, policy_types=types,
            constitutional_hash=response.constitutional_hash, by_type=by_type,
            wasm_us=response.performance_metrics.wasm_execution_time_us,
        ))
    return out


class ObservingRecorder:
    """The audit trail's recorder, followed by the replay store and the observers."""

    def __init__(self, inner: DecisionRecorder, store: ReplayStore, observers: list[Observer] | None = None) -> None:
        self.inner, self.store = inner, store
        self.observers = observers if observers is not None else []

    def _opted_out(self, response: EvaluateResponse, policy_types: list[str]) -> bool:
        out = self.store.opted_out
        return bool(out) and (any(t in out for t in policy_types) or any(r.policy_type in out for r in response.policy_results))

    async def record(self, response: EvaluateResponse, *, tier: str, source: Source, input_context: dict[str, Any],
                     policy_types: list[str]) -> object:
        stored = await self.inner.record(response, tier=tier, source=source, input_context=input_context,
                                         policy_types=policy_types)
        # the replay store and the observers at the loop's next turn, once the response is on its way
        asyncio.get_running_loop().call_soon(self._tap, [response], [input_context], source, tier, policy_types)
        return stored

    async def record_batch(self, responses: list[EvaluateResponse], contexts: list[dict[str, Any]], *, tier: str,
                           batch_id: str, latency_ms: float, policy_types: list[str]) -> object:
        stored = await self.inner.record_batch(responses, contexts, tier=tier, batch_id=batch_id, latency_ms=latency_ms,
                                               policy_types=policy_types)
        asyncio.get_running_loop().call_soon(self._tap, responses, contexts, "batch", tier, policy_types)
        return stored

    def _tap(self, responses: list[EvaluateResponse], contexts: list[dict[str, Any]], source: str, tier: str,
             policy_types: list[str]) -> None:
        if self.store.enabled:
            stored, inputs = responses, contexts
            if self.store.opted_out:
                kept = [(r, c) for r, c in zip(responses, contexts, strict=True) if not self._opted_out(r, policy_types)]
                stored, inputs = [r for r, _ in kept], [c for _, c in kept]
            self.store.submit_decisions(recorded(stored, inputs, source=source, tier=tier, policy_types=policy_types))
        if self.observers:
            for response, ctx in zip(responses, contexts, strict=True):
                self._observe(response, ctx, tier, policy_types)

    def _observe(self, response: EvaluateResponse, ctx: dict[str, Any], tier: str, policy_types: list[str]) -> None:
        for observer in self.observers:
            try:
                observer.observe(response, ctx, tier=tier, policy_types=policy_types,
                                 constitutional_hash=response.constitutional_hash)
            except Exception:  # an observer's fault never reaches the caller
                log.exception("impact: an observer failed (the decision is served and recorded)")


class JudgmentTap:
    """Files the model's answers in the replay store, each key once per `SEEN_FOR_S`."""

    def __init__(self, store: ReplayStore, type_of: Callable[[str], str | None] = lambda _: None) -> None:
        self.store = store
        self.type_of = type_of  # a policy name -> its type (for the per-type opt-out)
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def file(self, tier: str, request: Any, reply: Any) -> None:
        if not self.store.enabled or not isinstance(reply, dict):
            return
        try:
            body = msgspec.json.decode(request) if isinstance(request, (bytes, bytearray)) else request
            policy = str(body.get("policy", "")) if isinstance(body, dict) else ""
            if self.store.opted_out and (policy in self.store.opted_out or self.type_of(policy) in self.store.opted_out):
                return
            key = judgment_key(tier, body)
        except (msgspec.DecodeError, TypeError, ValueError):
            return
        self.file_keyed(Judgment(key=key, tier=tier, reply=reply))

    def file_keyed(self, judgment: Judgment) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._seen.get(judgment.key, -SEEN_FOR_S) < SEEN_FOR_S:
                return
            if len(self._seen) >= SEEN_MAX:
                self._seen.clear()
            self._seen[judgment.key] = now
        self.store.submit_judgment(judgment)

    def transport(self, inner: InferTransport) -> InferTransport:
        """`inner` (the evaluator's http.send transport), filing each answered judgment."""

        @functools.wraps(inner)
        def call(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
            status, reply = inner(tier, body, timeout)
            if status == 200:
                self.file(tier, body, reply)
            return status, reply

        return call

    def ask(self, inner: AskModel) -> AskModel:
        """`inner` (the pipeline's model stage client), filing each answered judgment."""

        @functools.wraps(inner)
        async def ask(tier: str, body: bytes) -> tuple[int, bytes, int]:
            status, data, max_age = await inner(tier, body)
            if status == 200:
                try:
                    self.file(tier, body, msgspec.json.decode(data))
                except msgspec.DecodeError:
                    pass
            return status, data, max_age

        return ask


class AgentDecisions:
    """OPA agents' decision-log events (already validated) as recorded decisions, with the
    judgments their `nd_builtin_cache` holds; a policy's type is found by its decision path."""

    def __init__(self, store: ReplayStore, tap: JudgmentTap, bridge_url: str,
                 policies: Callable[[], list[PolicyRecord]]) -> None:
        self.store, self.tap, self.bridge_url, self.policies = store, tap, bridge_url, policies

    def _type_of(self, path: str) -> str | None:
        return next((r.policy_type for r in self.policies() if rego.decision_path(r.rule_id) == path), None)

    def __call__(self, events: list[dict]) -> None:
        if not self.store.enabled:
            return
        entries = []
        for event in events:
            path = str(event.get("path", "")).strip("/")
            kind = self._type_of(path)
            if "input" not in event or (kind is not None and kind in self.store.opted_out):
                continue
            decision, _, _ = decision_of(event.get("result"), "result" in event)
            revision = next((str((b or {}).get("revision", "")) for b in (event.get("bundles") or {}).values()), "")
            entries.append(Recorded(id=str(event.get("decision_id", "")), ts=time.time(), source="opa-agent",
                                    input=event["input"], decision=decision, revision=revision, path=path,
                                    by_type={kind: decision} if kind else {}))
            for judgment in agent_judgments(event.get("nd_builtin_cache"), self.bridge_url):
                self.tap.file_keyed(judgment)
        self.store.submit_decisions(entries)
