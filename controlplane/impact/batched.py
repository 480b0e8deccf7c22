"""Judgments that changed, asked through GroqCloud's Batch API at its batch price (`via=batch`).

A replay cannot wait on a batch job per judgment the way it waits on an online call, so a batch
replay runs in passes (`in_passes`, used by `controlplane.impact.service` and by the evaluation
jobs of `controlplane.evaljobs`): a pass replays every decision with
`BatchReAsk` as the oracle's way of asking; a request that is neither recorded nor answered yet is
noted and answered like an unreachable model (503, which the policy reads as `review`), and that
pass's outcomes are thrown away. Between passes the noted requests go out as one batch per tier
(`bridge.inference.batch.BatchClient`), on the serving loop, and the next pass finds their answers
in memory. The pass that notes nothing new is the one reported, so a judgment asked only because
another one's answer changed is asked too (a following pass), up to `MAX_PASSES`.

`BatchAsker` is the control plane's Groq client for this, built from the same settings as the
inference worker's (`GROQ_API_KEY` for GroqCloud, else `GROQPOLICY_EMULATOR_URL`): with neither,
a batch replay is refused with 503 and says what to set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import groq
import msgspec

from bridge.inference.batch import BatchClient, BatchProgress
from bridge.inference.catalog import Catalog
from bridge.inference.wire import InferRequest, UnknownRoute, read_request
from bridge.inference.worker import groq_endpoint
from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import ConfigError, GroqPolicyError, Unavailable, error_document
from bridge.kernel.vocabulary import ROUTABLE_TIERS
from controlplane.impact.records import judgment_key

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_PASSES = 3  # a changed answer can change which question a policy asks next; deeper chains fail closed
NOT_YET = {"error": {"message": "asked through the Batch API; answered on the next pass", "type": "not_yet"}}


class BatchAsker:
    """The control plane's Batch API client (a component: the Groq client lives while the app does)."""

    def __init__(self, settings: GroqSettings, catalog: Catalog) -> None:
        self.settings, self.catalog = settings, catalog
        self.client: BatchClient | None = None
        self.missing = ""  # why there is no client

    async def start(self) -> None:
        try:
            endpoint = groq_endpoint(self.settings)
        except ConfigError as exc:
            self.missing = str(exc)
            return
        if endpoint.emulated:
            log.warning("impact via=batch: the Batch API of the Groq EMULATOR at %s", endpoint.base_url)
        sdk = groq.AsyncGroq(api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=2)
        self.client = BatchClient(sdk, self.catalog, completion_window=self.settings.batch_completion_window,
                                  poll_s=self.settings.batch_poll_s, emulated=endpoint.emulated)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.client.close()
            self.client = None

    def require(self) -> BatchClient:
        if self.client is None:
            raise Unavailable(f"impact: via=batch needs a Groq endpoint for the Batch API: {self.missing or 'not started'}")
        return self.client


class BatchReAsk:
    """`ReAsk` for one batch replay: answers what the batches answered, notes everything else."""

    name = "batch"

    def __init__(self, client: BatchClient) -> None:
        self.client = client
        self.answers: dict[str, dict[str, Any]] = {}  # judgment key -> the batch's reply
        self.pending: dict[str, tuple[str, InferRequest]] = {}  # asked this pass, not answered yet
        self.batches: list[str] = []  # the batch ids submitted, in order
        self.waited_ms: list[float] = []  # each job's wall time, submit to answers
        self._lock = threading.Lock()  # the evaluator's threads note requests too

    def _answer(self, tier: str, body: Any) -> tuple[int, Any]:
        key = judgment_key(tier, body)
        with self._lock:
            found = self.answers.get(key)
            if found is not None:
                return 200, found
            if key in self.pending:
                return 503, NOT_YET
        try:
            if tier not in ROUTABLE_TIERS:  # no worker listens on it: the gateway's 404, not a job that fails whole
                raise UnknownRoute(f"tier {tier!r}: unknown (known: {', '.join(ROUTABLE_TIERS)})")
            req = read_request(body if isinstance(body, bytes) else msgspec.json.encode(body), label="request")
        except GroqPolicyError as exc:  # as a worker would answer it: never asked, never allowed
            return exc.status, error_document(exc)
        with self._lock:
            self.pending.setdefault(key, (tier, req))
        return 503, NOT_YET

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        return self._answer(tier, body)

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        status, reply = self._answer(tier, body)
        return status, msgspec.json.encode(reply), 0

    async def ask_pending(self, progress: Callable[[BatchProgress], None] | None = None) -> int:
        """Submit what the last pass noted, one batch per tier; the number of requests asked."""
        with self._lock:
            pending, self.pending = self.pending, {}
        by_tier: dict[str, list[tuple[str, InferRequest]]] = {}
        for key, (tier, req) in pending.items():
            by_tier.setdefault(tier, []).append((key, req))
        for tier, items in sorted(by_tier.items()):
            started = time.perf_counter()
            replies = await self.client.submit([req for _, req in items], tier=tier, progress=progress,
                                               metadata={"purpose": "groqpolicy impact"})
            self.batches.append(self.client.last_batch_id)
            self.waited_ms.append((time.perf_counter() - started) * 1000)
            with self._lock:
                for (key, _), reply in zip(items, replies, strict=True):
                    self.answers[key] = msgspec.to_builtins(reply)
        return len(pending)


async def in_passes(reask: BatchReAsk, one_pass: Callable[[int], Awaitable[T]],
                    moved: Callable[[BatchProgress], None] | None = None) -> T:
    """`one_pass(1)`, then what it noted asked as batches (`moved` told of each job's progress), then
    `one_pass(2)`, until a pass notes nothing new; that pass's result. At `MAX_PASSES` what is still
    missing stays unanswered: the last pass decided it as an unreachable model (review)."""
    number = 1
    while True:
        result = await one_pass(number)
        if number == MAX_PASSES or not await reask.ask_pending(moved):
            return result
        number += 1
