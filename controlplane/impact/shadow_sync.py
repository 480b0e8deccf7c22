"""Every control-plane process follows the shadows' bucket through one KV watch.

The watch replays the bucket's newest value of every key (deletions included) and then delivers
each change as it is written, so a shadow begun, promoted or discarded on any process begins or
ends on every other one within a round trip, and each process sees the others' counters. What the
entries mean is the shadow mode's business (`Follower`); this module only reads the watch, tells
definitions from counters, and skips (with a log line) a value that does not read, so one bad
record never stops the others. A KV watch does not survive a server restart: `resync` starts a new
one after a reconnect, and its replay brings the deletions missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import msgspec
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from controlplane.impact.shadow_state import (
    BUCKET,
    COUNT,
    SHADOW,
    Counts,
    SavedShadow,
    ShadowBucket,
    decode_counts,
    decode_saved,
)
from controlplane.infra.kvwatch import watch_all
from controlplane.infra.nats import after_reconnect

log = logging.getLogger(__name__)
INITIAL_TIMEOUT_S = 30


class Follower(Protocol):
    async def defined(self, rule_id: str, saved: SavedShadow | None) -> None: ...

    def ended(self, rule_id: str) -> None: ...

    def counted(self, rule_id: str, process: str, counts: Counts | None) -> None: ...


class ShadowWatch:
    def __init__(self, bucket: ShadowBucket, follower: Follower) -> None:
        self.bucket, self.follower = bucket, follower
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the watch and apply what the bucket holds now, before returning."""
        kv = await self.bucket.bucket()
        watcher, entries = await watch_all(kv, timeout=INITIAL_TIMEOUT_S)
        self._watcher = watcher
        for entry in entries:
            await self._apply(entry)
        self._task = asyncio.create_task(self._follow(watcher), name="shadow-kv-watch")

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            try:
                await self._apply(entry)
            except Exception:  # one change that cannot be applied never ends the watch
                log.exception("shadows: applying %s failed", entry.key)

    async def _apply(self, entry: KeyValue.Entry) -> None:
        gone = entry.operation in (KV_DEL, KV_PURGE)
        key = entry.key
        if key.startswith(SHADOW):
            rule_id = key.removeprefix(SHADOW)
            if gone:
                self.follower.ended(rule_id)
                return
            try:
                saved: SavedShadow | None = decode_saved(entry.value or b"")
            except msgspec.DecodeError as exc:
                log.error("shadows: %s in bucket %s does not read (%s); skipped", key, BUCKET, exc)
                saved = None
            await self.follower.defined(rule_id, saved)
        elif key.startswith(COUNT) and key.count(".") == 2:
            _, rule_id, process = key.split(".")
            counts = None
            if not gone:
                try:
                    counts = decode_counts(entry.value or b"")
                except msgspec.DecodeError as exc:
                    log.error("shadows: counters %s do not read (%s); skipped", key, exc)
                    return
            self.follower.counted(rule_id, process, counts)
        else:
            log.error("shadows: unexpected key %s in bucket %s; skipped", key, BUCKET)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await watcher.stop()

    async def resync(self, attempts: int = 40, delay: float = 0.25) -> None:
        """After a reconnect: a new watch (retrying while JetStream recovers), replaying the bucket."""
        await self.stop()
        ok, _ = await after_reconnect(self.start, "shadows: watch", attempts=attempts, delay=delay)
        if ok:
            log.info("shadows: watch restarted after a reconnect")
