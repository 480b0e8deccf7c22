"""Policies in JetStream: a KV bucket (one key per policy, history = versions) and an object store
for compiled artifacts. Every replica keeps an in-memory view fed by a KV watch, so several control
planes on one NATS share one state; `on_change` tells the owner when the view moved.

The store is built before the NATS connection exists: it gets a way to the JetStream context
(`jetstream()`) and takes it when opened. Until then it holds no records, and a call that needs
JetStream is refused as unavailable (503).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import msgspec
import nats.errors
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from nats.js.object_store import ObjectStore

from bridge.kernel.errors import Conflict, GroqPolicyError, Unavailable
from controlplane.policies.schemas import PolicyRecord

log = logging.getLogger(__name__)

BUCKET = "groqpolicy_policies"
OBJECTS = "groqpolicy_artifacts"
HISTORY = 64  # JetStream's maximum: the last 64 versions of each policy
PREFIX = "policy."

_decode = msgspec.json.Decoder(PolicyRecord).decode
_encode = msgspec.json.Encoder().encode
_P = ParamSpec("_P")
_R = TypeVar("_R")


class StoreUnavailable(Unavailable):
    """JetStream did not answer (NATS down, no quorum): nothing was written."""


def _unavailable(fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """NATS/JetStream failures of a store call become StoreUnavailable (503) naming the call."""

    @functools.wraps(fn)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except GroqPolicyError:
            raise
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreUnavailable(f"policy store (JetStream): {fn.__name__} failed: {exc or type(exc).__name__}") from None

    return call


class StoreConflict(Conflict):
    """Someone else changed the policy between our read and our write."""


def key_for(rule_id: uuid.UUID) -> str:
    return PREFIX + str(rule_id)


class PolicyStore:
    def __init__(self, jetstream: Callable[[], JetStreamContext], replicas: int = 1) -> None:
        self.jetstream, self.replicas = jetstream, replicas
        self.kv: KeyValue | None = None
        self.obs: ObjectStore | None = None
        # rule_id -> (record, KV revision); deleted ids keep their revision to ignore stale updates
        self.view: dict[uuid.UUID, tuple[PolicyRecord, int]] = {}
        self._records: list[PolicyRecord] | None = None  # records() until the view changes
        self._deleted: dict[uuid.UUID, int] = {}
        self._watch_task: asyncio.Task | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self.on_change: Callable[[], Awaitable[None]] | None = None

    def _kv(self) -> KeyValue:
        if self.kv is None:
            raise StoreUnavailable("policy store (JetStream): not open (no NATS connection yet)")
        return self.kv

    def _obs(self) -> ObjectStore:
        if self.obs is None:
            raise StoreUnavailable("policy store (JetStream): not open (no NATS connection yet)")
        return self.obs

    async def ensure(self) -> None:
        """Get or create the bucket and the object store, without watching: what NATS's bootstrap runs
        (controlplane.infra.natsauth), since no running identity may create streams."""
        js = self.jetstream()
        try:
            self.kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            self.kv = await js.create_key_value(KeyValueConfig(
                bucket=BUCKET, history=HISTORY, replicas=self.replicas, storage=StorageType.FILE,
                description="groqpolicy policies (one key per policy; history = versions)",
            ))
        try:
            self.obs = await js.object_store(OBJECTS)
        except (BucketNotFoundError, NotFoundError):
            self.obs = await js.create_object_store(OBJECTS, config=ObjectStoreConfig(
                replicas=self.replicas, storage=StorageType.FILE, description="groqpolicy compiled policy artifacts"))

    async def open(self) -> None:
        await self.ensure()
        await self._watch()

    async def _watch(self) -> bool:
        """(Re)start the KV watch: replay the current values (True when the view changed), then follow."""
        self._watcher = watcher = await self._kv().watchall()
        changed = False
        # the initial values end with a None marker; after that the same watcher delivers live updates
        while True:
            entry = await watcher.updates(timeout=30)
            if entry is None:
                break
            changed = self._apply(entry) or changed
        self._watch_task = asyncio.create_task(self._follow(), name="policy-kv-watch")
        return changed

    async def resync(self, attempts: int = 40, delay: float = 0.25) -> None:
        """After a reconnect: the old watch's consumer may be gone with the server. Start a new one
        (retrying while JetStream recovers) and tell the owner if anything changed meanwhile."""
        await self._stop_watch()
        for attempt in range(attempts):
            try:
                changed = await self._watch()
                break
            except Exception as exc:  # noqa: BLE001 - JetStream not ready yet after a restart
                if attempt == attempts - 1:
                    log.error("policy KV: watch could not be restarted after a reconnect: %s", exc)
                    return
                await asyncio.sleep(delay)
        log.info("policy KV: watch restarted after a reconnect (view changed: %s)", changed)
        if changed and self.on_change is not None:
            await self.on_change()

    async def close(self) -> None:
        await self._stop_watch()

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
        self._watch_task = self._watcher = None

    async def _follow(self) -> None:
        watcher = self._watcher
        if watcher is None:
            return
        async for entry in watcher:
            if entry is None:
                continue
            try:
                changed = self._apply(entry)
            except msgspec.DecodeError as exc:
                log.error("policy KV: %s: undecodable record skipped: %s", entry.key, exc)
                continue
            if changed and self.on_change is not None:
                try:
                    await self.on_change()
                except Exception:
                    log.exception("policy KV: reacting to %s failed", entry.key)

    def _apply(self, entry) -> bool:
        if not entry.key.startswith(PREFIX):
            return False
        rule_id = uuid.UUID(entry.key[len(PREFIX):])
        current = self.view.get(rule_id)
        last = max(current[1] if current else 0, self._deleted.get(rule_id, 0))
        if entry.revision <= last:
            return False
        if entry.operation in (KV_DEL, KV_PURGE):
            self.view.pop(rule_id, None)
            self._deleted[rule_id] = entry.revision
            self._records = None
            return True
        self.view[rule_id] = (_decode(entry.value), entry.revision)
        self._records = None
        return True

    # -- writes (each also updates the local view at once: read-your-writes on this replica) ----
    @_unavailable
    async def create(self, record: PolicyRecord) -> int:
        revision = await self._kv().create(key_for(record.rule_id), _encode(record))
        self.view[record.rule_id] = (record, revision)
        self._records = None
        return revision

    @_unavailable
    async def update(self, record: PolicyRecord, last: int) -> int:
        try:
            revision = await self._kv().update(key_for(record.rule_id), _encode(record), last=last)
        except KeyWrongLastSequenceError:
            raise StoreConflict(f"policy {record.rule_id}: changed concurrently (expected KV revision {last}); retry") from None
        self.view[record.rule_id] = (record, revision)
        self._records = None
        return revision

    @_unavailable
    async def delete(self, rule_id: uuid.UUID, last: int) -> None:
        try:
            revision = await self._kv().delete(key_for(rule_id), last=last)
        except (KeyWrongLastSequenceError, APIError) as exc:
            if not isinstance(exc, KeyWrongLastSequenceError) and getattr(exc, "err_code", 0) != 10071:
                raise
            raise StoreConflict(f"policy {rule_id}: changed concurrently (expected KV revision {last}); retry") from None
        self.view.pop(rule_id, None)
        self._records = None
        if isinstance(revision, int):
            self._deleted[rule_id] = revision

    # -- reads -----------------------------------------------------------------------------
    @_unavailable
    async def get(self, rule_id: uuid.UUID) -> tuple[PolicyRecord, int] | None:
        """The latest stored version, read from the KV (not the view): fresh across replicas."""
        try:
            entry = await self._kv().get(key_for(rule_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        # not applied to the view: the watch must still see this revision as new, so that this
        # replica rebuilds its bundle for it (a GET racing ahead of the watch must not swallow it)
        return _decode(entry.value), entry.revision

    @_unavailable
    async def history(self, rule_id: uuid.UUID) -> list[PolicyRecord]:
        try:
            entries = await self._kv().history(key_for(rule_id))
        except NotFoundError:
            return []
        return [_decode(e.value) for e in entries if e.value and e.operation not in (KV_DEL, KV_PURGE)]

    def records(self) -> list[PolicyRecord]:
        """Every stored record; the same list object until the view changes (do not modify it)."""
        if self._records is None:
            self._records = [rec for rec, _ in self.view.values()]
        return self._records

    # -- artifacts -------------------------------------------------------------------------
    @_unavailable
    async def put_artifact(self, name: str, data: bytes) -> None:
        await self._obs().put(name, data)

    @_unavailable
    async def get_artifact(self, name: str) -> bytes | None:
        try:
            return (await self._obs().get(name)).data
        except NotFoundError:
            return None
