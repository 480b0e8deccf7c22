"""The inference engine: cache, coalescing, model calls with retries, breakers and fallback.

What each Groq failure does (documented behaviour; tests/test_worker_resilience.py asserts it):

| failure                         | retry same model?                       | breaker  | then            |
| ------------------------------- | --------------------------------------- | -------- | --------------- |
| 429 rate limit                  | yes, after `retry-after` (+ jitter) if  | failure  | next model      |
|                                 | it fits the budget and max_retry_after  |          |                 |
| 498 flex capacity               | no (capacity, not a broken model)       | -        | next model      |
| 5xx, connection error           | yes, exponential backoff + full jitter  | failure  | next model      |
| connection closed by the server | yes, exponential backoff + full jitter  | -        | next model      |
| (HTTP/2 GOAWAY mid-stream)      |                                         |          |                 |
| timeout (attempt budget spent)  | no (a slow model stays slow)            | failure  | next model      |
| malformed JSON / schema-invalid | no (temperature 0 repeats itself)       | failure  | next model      |
| other 4xx (400, 401, 404, ...)  | no                                      | failure  | next model      |
| breaker open                    | -                                       | -        | next model      |
| no call slot free in time       | no (our own bound on calls per model)   | -        | next model      |
| over budget: expected latency   | -                                       | -        | next model that |
| (measured p90, else typical) >  |                                         |          | fits the budget |
| budget left (real API only)     |                                         |          |                 |

Models come from the catalog: the request's `model` (aliases resolved), the tier's models, then the
fallback tier's; for tier `auto`, the route `bridge.inference.routing` chooses (in the reply as
`route`). Every call for a model goes through that model's pooled client and slots
(`bridge.inference.worker.pool`), and its latency feeds the model's measured percentiles. When every candidate failed the answer is `review` with `degraded: true` (never
allow, never cached); when the budget ran out first the reply is a 504 error. A call never gets
more time than the budget left, and while other candidates remain it gets at most half of it
(or 4x the model's typical latency, whichever is more), so a hanging model leaves room for the
fallback. The SDK's own retries are off: this loop owns them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import groq
import msgspec
from groq.types.chat import ChatCompletionMessageParam

from bridge.inference.cache import KVCache, TTLCache, cache_key
from bridge.inference.catalog import Catalog, CatalogError, ModelSpec
from bridge.inference.completion import BadAnswer, completion_params, read_verdict
from bridge.inference.latency import LatencyBook
from bridge.inference.prompts import render
from bridge.inference.routing import Router
from bridge.inference.wire import (
    InferReply,
    InferRequest,
    InvalidInferRequest,
    Route,
    Usage,
    Verdict,
)
from bridge.inference.worker.breaker import CircuitBreaker
from bridge.inference.worker.failures import ModelFailure, failure_of, usage_of
from bridge.inference.worker.pool import ModelPool
from bridge.kernel.config import EngineSettings
from bridge.kernel.errors import DeadlineExceeded
from bridge.kernel.vocabulary import AUTO_TIER

log = logging.getLogger("groqpolicy.worker")
EMPTY_USAGE = Usage()
_encode = msgspec.json.encode
_decode_reply = msgspec.json.Decoder(InferReply).decode
MIN_CALL_S = 0.005
"""Below this much budget a model call cannot succeed; stop instead of starting one."""
Answer = tuple[Verdict, Usage, str]
"""A model's answer: the verdict, what it cost, and the model that served it."""


@dataclass
class Counters:
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    coalesced: int = 0
    model_calls: int = 0
    model_failures: int = 0
    fallbacks: int = 0
    degraded: int = 0
    deadline_exceeded: int = 0
    errors: int = 0


@dataclass
class _Trial:
    """One request's way through the candidates: what it asks and what went wrong so far."""

    messages: list[ChatCompletionMessageParam]
    deadline: float
    failures: list[str] = field(default_factory=list)
    attempts: int = 0


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


class InferenceEngine:
    """`client` is the Groq client every model's own pooled client is copied from; with
    `per_model_clients=False` all calls share it (bounded per model all the same)."""

    def __init__(self, client: groq.AsyncGroq, catalog: Catalog, *, emulated: bool,
                 settings: EngineSettings | None = None, l2: KVCache | None = None,
                 per_model_clients: bool = True) -> None:
        self.client = client
        self.catalog = catalog
        self.emulated = emulated
        self.settings = settings or EngineSettings.from_env()
        self.pool = ModelPool(client, catalog.models, self.settings, per_model=per_model_clients)
        self.latency = LatencyBook({m: s.typical_latency_ms for m, s in catalog.models.items()},
                                   window_s=self.settings.latency_window_s)
        self.inflight: Counter[str] = Counter()
        self.router = Router(catalog, self.latency, self.inflight)
        # replies kept encoded: 10,000 reply structs (each with its usage and reasons) were ~30,000
        # objects every full collection of this process walked (5.7 ms each); a hit decodes ~300 bytes
        self.l1: TTLCache[bytes] = TTLCache(self.settings.l1_size)
        self.l2 = l2
        self.breakers: dict[str, CircuitBreaker] = {
            m: CircuitBreaker(self.settings.breaker_threshold, self.settings.breaker_reset_s) for m in catalog.models
        }
        self.counters = Counters()
        self._inflight: dict[str, asyncio.Future[tuple[InferReply, int]]] = {}
        self._bg: set[asyncio.Task[None]] = set()

    # ---- cache fast path (synchronous, used by the service before it spawns a task) ---------
    def lookup_l1(self, tier: str, req: InferRequest, started: float) -> tuple[InferReply, int] | None:
        key = cache_key(tier, req)
        hit = self.l1.get(key)
        if hit is None:
            self.counters.l1_misses += 1
            return None
        self.counters.l1_hits += 1
        return self._as_cached(_decode_reply(hit), started), int(self.l1.ttl_left(key))

    def keep(self, key: str, reply: InferReply, ttl_s: float) -> None:
        """`reply` into the in-process cache under `key` for `ttl_s` (kept encoded)."""
        self.l1.set(key, _encode(reply), ttl_s)

    @staticmethod
    def _as_cached(reply: InferReply, started: float) -> InferReply:
        return msgspec.structs.replace(reply, cached=True, usage=EMPTY_USAGE, latency_ms=_elapsed_ms(started))

    # ---- full path -----------------------------------------------------------------------------
    async def infer(self, tier: str, req: InferRequest, deadline: float, started: float,
                    *, skip_l1: bool = False) -> tuple[InferReply, int]:
        """(reply, max-age seconds). `deadline` is on time.monotonic(); `started` on perf_counter()."""
        if req.model:
            try:
                self.catalog.resolve(req.model)
            except CatalogError as exc:
                raise InvalidInferRequest(exc.message, status=422, code="model_not_found") from exc
        key = cache_key(tier, req)
        if not skip_l1:
            hit = self.lookup_l1(tier, req, started)
            if hit is not None:
                return hit
        fut = self._inflight.get(key)
        if fut is not None:
            self.counters.coalesced += 1
            reply, max_age = await self._wait(fut, deadline)
            return msgspec.structs.replace(reply, latency_ms=_elapsed_ms(started)), max_age
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        task = asyncio.create_task(self._resolve(key, tier, req, deadline, started))
        task.add_done_callback(functools.partial(self._settle, key, fut))
        return await self._wait(fut, deadline)

    def _settle(self, key: str, fut: asyncio.Future[tuple[InferReply, int]],
                task: asyncio.Task[tuple[InferReply, int]]) -> None:
        self._inflight.pop(key, None)
        if fut.done():
            return
        if task.cancelled():
            fut.set_exception(DeadlineExceeded("inference cancelled"))
        elif (exc := task.exception()) is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(task.result())
        if not fut.cancelled():
            fut.exception()  # mark retrieved: every waiter may already have timed out

    async def _wait(self, fut: asyncio.Future[tuple[InferReply, int]], deadline: float) -> tuple[InferReply, int]:
        left = deadline - time.monotonic()
        if left <= 0:
            self.counters.deadline_exceeded += 1
            raise DeadlineExceeded("deadline exceeded before an answer was available")
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=left)
        except TimeoutError as exc:
            self.counters.deadline_exceeded += 1
            raise DeadlineExceeded("deadline exceeded while waiting for the model") from exc

    async def _resolve(self, key: str, tier: str, req: InferRequest, deadline: float,
                       started: float) -> tuple[InferReply, int]:
        if self.l2 is not None:
            got = await self._l2_get(self.l2, key, deadline)
            if got is not None:
                self.counters.l2_hits += 1
                reply, ttl_left = got
                self.keep(key, reply, ttl_left)
                return self._as_cached(reply, started), int(ttl_left)
            self.counters.l2_misses += 1
        reply = await self._call_models(tier, req, deadline, started)
        if reply.degraded:
            return reply, self.settings.review_max_age_s
        ttl = self.catalog.tier(reply.tier).cache_ttl_s  # for `auto`, the tier it was routed to
        self.keep(key, reply, ttl)
        if self.l2 is not None:
            t = asyncio.create_task(self.l2.put(key, reply, ttl))
            self._bg.add(t)
            t.add_done_callback(self._bg.discard)
        return reply, ttl

    @staticmethod
    async def _l2_get(l2: KVCache, key: str, deadline: float) -> tuple[InferReply, float] | None:
        """An L2 hit, if the bucket answers within the budget (and half a second at most)."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(l2.get(key), timeout=min(left, 0.5))
        except TimeoutError:
            return None

    def _candidates(self, tier: str, req: InferRequest, deadline: float) -> tuple[str, list[str], dict[str, Any]]:
        """(tier, models to try in order, extra reply fields): tier `auto` asks the router."""
        if tier != AUTO_TIER:
            return tier, self.catalog.candidates(tier, req.model), {}
        route: Route = self.router.choose(req, (deadline - time.monotonic()) * 1000)
        if req.model:  # a named model leads only when it fits what the request needs
            preferred = self.catalog.resolve(req.model)[0]
            if preferred in route.models:
                route.models = [preferred, *(m for m in route.models if m != preferred)]
            else:
                route.reason += f"; requested model {preferred} does not fit"
        return route.tier, route.models, {"route": route}

    async def _call_models(self, tier: str, req: InferRequest, deadline: float, started: float) -> InferReply:
        """Each candidate in turn until one answers; when none does, fail closed to `review`."""
        resolved_from = self.catalog.resolve(req.model)[1] if req.model else None
        alias: dict[str, Any] = {"requested_model": req.model, "resolved_from": resolved_from} if resolved_from else {}
        tier, candidates, routed = self._candidates(tier, req, deadline)
        alias.update(routed)
        trial = _Trial(messages=render(req), deadline=deadline)
        for i, model in enumerate(candidates):
            answer = await self._try_model(model, tier, req, trial, rest=candidates[i + 1:])
            if answer is None:
                continue
            verdict, usage, served_by = answer
            if i > 0:
                self.counters.fallbacks += 1
            usage.attempts = trial.attempts
            return InferReply(
                decision=verdict.decision, confidence=verdict.confidence, rationale=verdict.rationale,
                findings=verdict.findings, model=served_by, tier=tier, emulated=self.emulated, usage=usage, latency_ms=_elapsed_ms(started),
                reasons=[f"earlier attempt failed: {f}" for f in trial.failures], **alias,
            )
        self.counters.degraded += 1
        log.warning("tier %s: no model produced a valid answer: %s", tier, "; ".join(trial.failures))
        return InferReply(
            decision="review", confidence=0.0, rationale="no model produced a valid answer; failing closed to review",
            model="", tier=tier, emulated=self.emulated, usage=Usage(attempts=trial.attempts),
            latency_ms=_elapsed_ms(started), degraded=True, reasons=trial.failures, **alias,
        )

    async def _try_model(self, model: str, tier: str, req: InferRequest, trial: _Trial,
                         rest: list[str]) -> Answer | None:
        """One candidate, retried as its failures allow; None (reasons in `trial`) to move on."""
        spec = self.catalog.models[model]
        breaker = self.breakers[model]
        retries = self.settings.retries_per_model
        for attempt in range(retries):
            left = trial.deadline - time.monotonic()
            if left < MIN_CALL_S:
                self.counters.deadline_exceeded += 1
                raise DeadlineExceeded(f"deadline exceeded after {trial.attempts} model call(s)"
                                       + (f": {'; '.join(trial.failures)}" if trial.failures else ""))
            if attempt == 0 and self._over_budget(spec, left, rest):
                expected, source = self.latency.expected_ms(model)
                trial.failures.append(f"{model}: expected latency {expected:.0f} ms ({source}) is over the "
                                      f"remaining budget of {left * 1000:.0f} ms")
                return None
            if not breaker.allow():
                trial.failures.append(f"{model}: circuit {breaker.state}")
                return None
            trial.attempts += 1
            self.counters.model_calls += 1
            last = not rest and attempt + 1 >= retries
            timeout = left if last else min(left, max(left / 2, spec.typical_latency_ms * 4 / 1000))
            try:
                answer = await self._call(model, spec, tier, trial.messages, timeout, req)
            except ModelFailure as exc:
                self.counters.model_failures += 1
                trial.failures.append(str(exc))
                if exc.breaker:
                    breaker.record_failure()
                else:
                    breaker.release_probe()  # capacity limits say nothing about the model's health
                if not exc.retry or attempt + 1 >= retries or not await self._wait_to_retry(model, exc, attempt, trial):
                    return None
                continue
            breaker.record_success()
            return answer
        return None

    async def _wait_to_retry(self, model: str, exc: ModelFailure, attempt: int, trial: _Trial) -> bool:
        """Sleep before the next attempt; False (and why, in `trial`) when the wait does not fit."""
        # retry-after is a floor: add up to 10% jitter so that workers told the same instant do
        # not return in lockstep; without it, exponential backoff with full jitter
        wait = exc.wait_s * random.uniform(1.0, 1.1) if exc.wait_s is not None else self._backoff(attempt)
        if wait > self.settings.max_retry_after_s or time.monotonic() + wait + MIN_CALL_S >= trial.deadline:
            said = f"retry-after {exc.wait_s:g}s" if exc.wait_s is not None else f"backoff {wait:.3g}s"
            trial.failures.append(f"{model}: {said} does not fit the budget")
            return False
        await asyncio.sleep(wait)
        return True

    def _over_budget(self, spec: ModelSpec, left: float, rest: list[str]) -> bool:
        """Skip a model expected (measured p90, else typical) to need more than the budget left
        while a later one fits it."""
        if self.emulated or self.latency.expected_ms(spec.id)[0] / 1000 <= left:
            return False
        return any(self.latency.expected_ms(m)[0] / 1000 <= left for m in rest)

    def _backoff(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^attempt)].
        return random.uniform(0, min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** attempt))

    async def _call(self, model: str, spec: ModelSpec, tier: str, messages: list[ChatCompletionMessageParam],
                    timeout: float, req: InferRequest) -> Answer:
        """One model call; a ModelFailure says what went wrong and whether to retry."""
        params = completion_params(self.catalog, model, tier, req, messages)  # rendered once per request
        self.inflight[model] += 1
        t0 = time.perf_counter()
        try:
            async with self.pool.slot(model, timeout):
                # the slot's wait counts against the call's own timeout
                completion = await self.pool.client(model).chat.completions.create(
                    **params, timeout=max(MIN_CALL_S, timeout - (time.perf_counter() - t0)))
        except groq.APIError as exc:
            raise failure_of(model, exc, timeout) from exc
        except TimeoutError as exc:  # our own bound, not the model's fault
            raise ModelFailure(model, f"no free call slot within {timeout:.3g}s ({self.settings.model_concurrency} "
                                      "calls in flight)", retry=False, breaker=False) from exc
        finally:
            self.inflight[model] -= 1
        self.latency.record(model, (time.perf_counter() - t0) * 1000)
        try:
            verdict = read_verdict(completion.choices[0].message.content if completion.choices else None, req.answer)
        except BadAnswer as exc:
            raise ModelFailure(model, str(exc), retry=False, breaker=True) from exc
        return verdict, usage_of(completion, spec), completion.model or model

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            **c.__dict__,
            "l1_size": len(self.l1),
            "inflight": len(self._inflight),
            "emulated": self.emulated,
            "breakers": {m: b.state for m, b in self.breakers.items()},
            "waiting_for_slot": self.pool.waiting,
            "latency": self.latency.snapshot(),
        }
