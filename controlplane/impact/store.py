"""The replay store: a JetStream stream of decisions' inputs and the model's judgments.

On JetStream (not a local file) so that it is shared by every control-plane replica and scales
with the cluster. The stream keeps messages for `GROQPOLICY_REPLAY_MAX_AGE_H` (default 7 days) and
at most `GROQPOLICY_REPLAY_MAX_BYTES`, dropping the oldest first. It is created by the bootstrap
identity; the control plane may only append to it and read it (controlplane.infra.natsauth).

Recording is off the caller's clock: `submit_*` only appends to an in-memory buffer (from any
thread) and returns; a background task publishes what gathered, many entries per message, a few
times a second. The buffer is bounded: when JetStream is slow or away, entries beyond the bound are
dropped and counted (`dropped`), never waited for, and a publish that fails drops its message with a
warning: the replay store is a best-effort sample for analysis, the audit trail is the record.
Inputs are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from bridge.kernel.config import Settings
from bridge.kernel.errors import ConfigError, Conflict, Unavailable
from controlplane.impact.records import (
    DECISION_SUBJECT,
    DIVERGENCE_SUBJECT,
    JUDGMENT_SUBJECT,
    Divergence,
    Judgment,
    Recorded,
)
from controlplane.infra import directget
from controlplane.metrics.recorders import REPLAY_RECORDED, child

log = logging.getLogger(__name__)

STREAM = "GROQPOLICY_REPLAY"
SUBJECTS = "replay.>"
MAX_PENDING = 50_000  # entries waiting for JetStream before new ones are dropped
MESSAGE_BYTES = 512 * 1024  # entries per message, up to about this size (NATS' default max payload is 1 MiB)
FLUSH_S = 0.1
STOP_PUBLISH_S = 2.0  # a stop's publish waits this long for JetStream (the stop has 10 s in all)
_encode = msgspec.json.Encoder().encode
_decode_decisions = msgspec.json.Decoder(list[Recorded]).decode
_decode_judgments = msgspec.json.Decoder(list[Judgment]).decode
_decode_divergences = msgspec.json.Decoder(list[Divergence]).decode


class ReplayUnavailable(Unavailable):
    pass


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=STREAM, description="groqpolicy replay store: decisions' inputs and model judgments (admin only)",
        subjects=[SUBJECTS], storage=StorageType.FILE, num_replicas=settings.nats_replicas,
        max_age=settings.replay_max_age_h * 3600, max_bytes=settings.replay_max_bytes,
        discard=DiscardPolicy.OLD, allow_direct=True,
    )


async def ensure_stream(nc: NatsClient, settings: Settings, *, update: bool = True) -> None:
    """Create the stream where it is missing, or bring its retention in line (the bootstrap's step;
    the control plane may not update it, and only creates it on a server that lets it)."""
    js = nc.jetstream(timeout=5)
    config = stream_config(settings)
    try:
        info = await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(config)
        return
    if update and (info.config.max_age != config.max_age or info.config.max_bytes != config.max_bytes):
        await js.update_stream(config)


def _pack(subject: str, items: list[Any], out: list[tuple[str, bytes, int]]) -> None:
    """`items` as JSON arrays of up to about `MESSAGE_BYTES` each, encoded in one call per array: what
    a flush holds usually fits in one. Too large, they are cut into as many runs as the size asks for
    and one more, each packed the same way (one entry larger than the limit goes alone)."""
    data = _encode(items)
    if len(data) <= MESSAGE_BYTES or len(items) == 1:
        out.append((subject, data, len(items)))
        return
    step = -(-len(items) // min(len(items), len(data) // MESSAGE_BYTES + 1))
    for k in range(0, len(items), step):
        _pack(subject, items[k:k + step], out)


class ReplayStore:
    """Buffers and publishes recorded decisions and judgments; reads them back for a replay."""

    def __init__(self, client: Callable[[], NatsClient], settings: Settings) -> None:
        self.client = client  # the control plane's connection, once connected
        self.settings = settings
        mode = settings.replay.strip().lower()
        if mode not in ("on", "off"):
            raise ConfigError(f"GROQPOLICY_REPLAY={settings.replay!r}: expected on or off")
        self.enabled = mode == "on"
        self.opted_out = frozenset(n.strip() for n in settings.replay_opt_out.split(",") if n.strip())
        self._lock = threading.Lock()
        self._decisions: list[tuple[str, Recorded]] = []
        self._judgments: list[Judgment] = []
        self._divergences: list[Divergence] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.published = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.enabled:
            return
        with contextlib.suppress(Exception):  # an open server (tests, dev): make it; else the bootstrap did
            await ensure_stream(self.client(), self.settings, update=False)
        self._task = asyncio.create_task(self._run(), name="replay-store")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.flush(stopping=True)

    # -- writing (any thread, never blocks) -------------------------------------------------------
    def submit_decisions(self, entries: list[Recorded]) -> None:
        if not self.enabled or not entries:
            return
        with self._lock:
            if len(self._decisions) + len(self._judgments) >= MAX_PENDING:
                self._dropped(len(entries))
                return
            self._decisions.extend((e.source, e) for e in entries)

    def submit_judgment(self, judgment: Judgment) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._decisions) + len(self._judgments) >= MAX_PENDING:
                self._dropped(1)
                return
            self._judgments.append(judgment)

    def _dropped(self, n: int) -> None:
        self.dropped += n
        child(REPLAY_RECORDED, "dropped").inc(n)

    def submit_divergence(self, divergence: Divergence) -> None:
        """It holds no input, only its digest (so the per-type opt-out does not apply; the switch does)."""
        if not self.enabled:
            return
        with self._lock:
            if len(self._divergences) >= MAX_PENDING:
                self._dropped(1)
                return
            self._divergences.append(divergence)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:
                log.warning("replay store: a flush failed", exc_info=True)

    async def flush(self, *, stopping: bool = False) -> None:
        """Publish what is buffered (judgments first: a decision's judgments precede it). `stopping`:
        nothing is tried without a connection, each publish waits `STOP_PUBLISH_S`, and after one that
        failed the rest is dropped at once (each would only wait out its timeout, past the stop's grace)."""
        with self._lock:
            decisions, self._decisions = self._decisions, []
            judgments, self._judgments = self._judgments, []
            divergences, self._divergences = self._divergences, []
        if stopping and not self._connected():
            self._drop(len(decisions) + len(judgments) + len(divergences), "NATS is not connected at stop")
            return
        messages = self._messages(decisions, judgments, divergences)
        for k, (subject, data, n) in enumerate(messages):
            try:
                await self.client().jetstream(timeout=STOP_PUBLISH_S if stopping else 5).publish(subject, data)
                self.published += n
                child(REPLAY_RECORDED, "published").inc(n)
            except asyncio.CancelledError:  # a stop while it waited for JetStream: counted like any other drop
                self._drop(sum(m[2] for m in messages[k:]), "stopped while publishing them")
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away, stream missing: dropped, counted, never fatal
                self._drop(sum(m[2] for m in messages[k:]) if stopping else n, f"{type(exc).__name__}: {exc}")
                if stopping:
                    return

    def _connected(self) -> bool:
        try:
            return bool(self.client().is_connected)
        except Exception:  # noqa: BLE001 - never connected, or closed already
            return False

    def _drop(self, n: int, why: str) -> None:
        if n:
            self._dropped(n)
            log.warning("replay store: %d entries dropped (%s)", n, why)

    @staticmethod
    def _messages(decisions: list[tuple[str, Recorded]], judgments: list[Judgment],
                  divergences: list[Divergence]) -> list[tuple[str, bytes, int]]:
        out: list[tuple[str, bytes, int]] = []
        groups: list[tuple[str, list[Any]]] = [(JUDGMENT_SUBJECT, list(judgments)), (DIVERGENCE_SUBJECT, list(divergences))]
        groups += [(f"{DECISION_SUBJECT}.{source}", [e for s, e in decisions if s == source])
                   for source in dict.fromkeys(s for s, _ in decisions)]
        for subject, items in groups:
            if items:
                _pack(subject, items, out)
        return out

    # -- reading (admin only: the API guards it) ---------------------------------------------------
    async def judgments(self) -> dict[str, Judgment]:
        """Every retained judgment by its key (the newest answer wins)."""
        found: dict[str, Judgment] = {}
        async for data in self._scan(JUDGMENT_SUBJECT, None):
            try:
                for j in _decode_judgments(data):
                    found[j.key] = j
            except msgspec.DecodeError:
                log.warning("replay store: an unreadable judgment message skipped")
        return found

    async def decisions(self, since: float | None, count: int | None) -> list[Recorded]:
        """The decisions recorded since `since` (unix seconds; None: all retained), the newest
        `count` of them when given, oldest first."""
        kept: deque[Recorded] = deque(maxlen=count) if count else deque()
        async for data in self._scan(f"{DECISION_SUBJECT}.>", since):
            try:
                kept.extend(e for e in _decode_decisions(data) if since is None or e.ts >= since)
            except msgspec.DecodeError:
                log.warning("replay store: an unreadable decision message skipped")
        return list(kept)

    async def divergences(self, rule_id: str, since: float | None) -> list[Divergence]:
        """What shadows of `rule_id` found since `since` (unix seconds; None: all retained), oldest first."""
        found: list[Divergence] = []
        async for data in self._scan(DIVERGENCE_SUBJECT, since):
            try:
                found.extend(d for d in _decode_divergences(data) if d.rule_id == rule_id)
            except msgspec.DecodeError:
                log.warning("replay store: an unreadable divergence message skipped")
        return found

    async def _scan(self, subject: str, since: float | None) -> AsyncIterator[bytes]:
        """The stored messages on `subject` from `since` on, by JetStream's batched direct get."""
        try:
            async for _, _, data in directget.scan(self.client(), STREAM, subject, start_time=since, timeout=5):
                yield data
        except nats.errors.TimeoutError:
            raise ReplayUnavailable(f"replay store: stream {STREAM} did not answer (missing?)") from None
        except directget.DirectGetRefused as exc:
            raise ReplayUnavailable(f"replay store: direct get answered {exc.status}") from None

    def check_enabled(self) -> None:
        if not self.enabled:
            raise Conflict("replay store: off (GROQPOLICY_REPLAY=off): nothing is recorded, so there is nothing to replay")
