"""A batch split across the control-plane processes of a deployment (`GROQPOLICY_PROCESSES`).

The process that took the HTTP request cuts its contexts into one chunk per process: it decides
the first itself and asks for the others on `policy.evaluate.chunk`, served in the same queue group
as `policy.evaluate` by every process (on this machine and on others), all at once. The origin alone
escalates and records the batch (one audit record, as before), so the chunks are decisions only.

A chunk is decided under the bundle revision the origin pinned: a process on another revision (a
write it has not followed yet) refuses it (409), and so does the origin itself when the queue group
hands its own chunk back to it (it is deciding its own share already). A refused chunk is asked
again, a few times; a chunk that is refused every time, times out, or meets an error is decided by
the origin itself, so a batch is never lost and an error never becomes a decision. The request says
how long the origin waits (`BUDGET_HEADER`): the process deciding a chunk stops when that time is
up, since the origin is deciding it again by then (on a loaded machine, finishing it anyway held
evaluation threads that the next batches needed, and did the work twice).

A split pays only where the other processes bring cores this one's threads do not reach (more
cores than one process's event loop and chunk thread, or other machines). Where they do not (one
machine of two cores running a process per core, `groqpolicy up`'s default there), each share took
as long as the whole batch decided in one process, and the round trip, the encodings and a share
handed back to its origin came on top: twice the time of no split. So each process times its
splittable batches both ways (`SplitChoice`) and splits only while that has been the faster per
context, trying the other way now and then so that a change of load or of peers is seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.errors import Error as NatsError

from bridge.inference.wire import BUDGET_HEADER, header_budget_ms  # how long the caller waits, as a model call says it
from controlplane.evaluation.interfaces import Evaluator
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.infra.nats import NatsConnection

log = logging.getLogger(__name__)

CHUNK_SUBJECT = "policy.evaluate.chunk"
MIN_CHUNK = 25  # contexts: below this a round trip to another process costs more than it saves
ATTEMPTS = 4  # a chunk the queue group hands to a process that refuses it is asked again this often
TIMEOUT_S = 10.0
ORIGIN_HEADER = "Groqpolicy-Origin"
REFUSED = "409"
FLUSH_TURNS = 3  # event-loop turns for the chunk requests to reach the socket (task, publish, flusher)
LEARN = 3  # splittable batches timed each way before the two are compared
PROBE_EVERY = 16  # then one splittable batch in this many goes the way not in favour, to keep its time current
WEIGHT = 0.2  # of the newest batch in each way's running mean


class Chunk(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What another process needs to decide part of a batch exactly as the origin would."""

    contexts: list[dict[str, Any]]
    policy_types: list[str]
    tier: str
    constitutional_hash: str
    explain: bool
    revision: str


Decide = Callable[..., Awaitable[list[EvaluateResponse]]]  # the pipeline's `decide_many`
Peers = tuple[NatsConnection, int] | None  # the connection to the other processes, and how many processes in all
_decode_chunk = msgspec.json.Decoder(Chunk).decode
_decode_responses = msgspec.json.Decoder(list[EvaluateResponse]).decode
_encode = msgspec.json.Encoder().encode


def decode_chunk(data: bytes) -> Chunk:
    return _decode_chunk(data)


def encode(value: Any) -> bytes:
    return _encode(value)


def bounds(n: int, processes: int) -> list[tuple[int, int]]:
    """The chunks of `n` contexts over `processes` processes: equal shares, none below `MIN_CHUNK`."""
    parts = max(1, min(processes, n // MIN_CHUNK))
    size, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append((start, end))
        start = end
    return out


class SplitChoice:
    """Whether the next splittable batch is split: whichever way has taken less time per context,
    as a running mean over the batches timed that way (a split's fallbacks included: a share
    refused, lost or failed is part of what splitting costs). Each way is timed `LEARN` times
    first (a split first: it is what the deployment asked for), and the way out of favour still
    gets one batch in `PROBE_EVERY`."""

    def __init__(self) -> None:
        self.mean_s: dict[bool, float | None] = {True: None, False: None}  # per context, split or not
        self.timed = {True: 0, False: 0}
        self._turn = 0

    def split(self) -> bool:
        for way in (True, False):
            if self.timed[way] < LEARN:
                return way
        self._turn += 1
        split, whole = self.mean_s[True], self.mean_s[False]
        favoured = split is not None and whole is not None and split <= whole
        return not favoured if self._turn % PROBE_EVERY == 0 else favoured

    def took(self, split: bool, seconds: float, contexts: int) -> None:
        per = seconds / contexts
        mean = self.mean_s[split]
        self.mean_s[split] = per if mean is None else mean + WEIGHT * (per - mean)
        self.timed[split] += 1


class BatchSpread:
    """Decides a batch's chunks on every process; `decide` is the local `decide_many`."""

    def __init__(self, peers: Peers, decide: Decide) -> None:
        """`peers` None or one process in all: every batch is decided where it arrived."""
        self._nats: NatsConnection | None
        self._nats, self.processes = peers if peers is not None else (None, 1)
        self._decide_many = decide
        self.origin = uuid.uuid4().hex  # this process, as the chunks it sends say
        self.sent = self.answered_elsewhere = 0
        self.choice = SplitChoice()  # `choice.timed[False]`: splittable batches decided whole here

    @property
    def enabled(self) -> bool:
        return self._nats is not None and self.processes > 1

    async def decide(self, chunk: Chunk) -> list[EvaluateResponse]:
        """A chunk decided here, as `Pipeline.evaluate_batch` decides its contexts (no escalation, no record)."""
        return await self._decide_many(chunk.contexts, policy_types=chunk.policy_types, tier=chunk.tier,
                                       constitutional_hash=chunk.constitutional_hash, explain=chunk.explain, echo_input=True)

    async def decide_batch(self, contexts: list[dict[str, Any]], policy_types: list[str], tier: str, constitutional_hash: str,
                           explain: bool, evaluator: Evaluator) -> list[EvaluateResponse]:
        """A batch's decisions under the revision `evaluator` serves now."""
        return await self.decide_many(Chunk(contexts=contexts, policy_types=policy_types, tier=tier, explain=explain,
                                            constitutional_hash=constitutional_hash, revision=evaluator.revision or ""))

    async def decide_many(self, chunk: Chunk) -> list[EvaluateResponse]:
        """The batch split (`_split`) or decided whole here, whichever `choice` says has been faster."""
        n = len(chunk.contexts)
        if self._nats is None or not self.enabled or not self._nats.connected or len(bounds(n, self.processes)) < 2:
            return await self.decide(chunk)
        split = self.choice.split()
        started = time.perf_counter()
        decided = await (self._split(chunk) if split else self.decide(chunk))
        self.choice.took(split, time.perf_counter() - started, n)
        return decided

    async def _split(self, chunk: Chunk) -> list[EvaluateResponse]:
        """The batch's chunks, one decided here and the others by the other processes at once."""
        parts = [Chunk(contexts=chunk.contexts[i:j], policy_types=chunk.policy_types, tier=chunk.tier,
                       constitutional_hash=chunk.constitutional_hash, explain=chunk.explain, revision=chunk.revision)
                 for i, j in bounds(len(chunk.contexts), self.processes)]
        remote = [asyncio.ensure_future(self._elsewhere(p)) for p in parts[1:]]
        # this process's own share may run inline and hold the loop until it is done: first let the
        # requests for the other shares go out (their tasks publish, then NATS's flusher writes)
        for _ in range(FLUSH_TURNS):
            await asyncio.sleep(0)
        own = await self.decide(parts[0])
        return [r for part in [own, *await asyncio.gather(*remote)] for r in part]

    @staticmethod
    def budget(headers: dict[str, str] | None) -> float:
        """Seconds the origin of a chunk waits for its answer (`TIMEOUT_S` when it does not say)."""
        ms = header_budget_ms(headers, int(TIMEOUT_S * 1000))
        return ms / 1000 if ms is not None else TIMEOUT_S

    def own(self, headers: dict[str, str] | None) -> bool:
        """Whether a chunk came from this process (the queue group handed it back)."""
        return (headers or {}).get(ORIGIN_HEADER) == self.origin

    async def _elsewhere(self, chunk: Chunk) -> list[EvaluateResponse]:
        assert self._nats is not None
        payload = _encode(chunk)
        self.sent += 1
        for _ in range(ATTEMPTS):
            try:
                msg = await self._nats.client.request(CHUNK_SUBJECT, payload, timeout=TIMEOUT_S, headers={
                    ORIGIN_HEADER: self.origin, BUDGET_HEADER: str(int(TIMEOUT_S * 1000))})
            except (NatsError, TimeoutError, OSError) as exc:
                log.warning("batch chunk: no process answered (%s); deciding it here", type(exc).__name__)
                break
            code = (msg.headers or {}).get("Nats-Service-Error-Code")
            if code == REFUSED:
                continue  # its own chunk back, or another revision: ask again
            if code is not None:
                log.warning("batch chunk: %s %s; deciding it here", code, (msg.headers or {}).get("Nats-Service-Error"))
                break
            try:
                responses = _decode_responses(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("batch chunk: unreadable answer (%s); deciding it here", exc)
                break
            if len(responses) == len(chunk.contexts):
                self.answered_elsewhere += 1
                return responses
            break
        return await self.decide(chunk)
