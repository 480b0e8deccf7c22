"""Policies in JetStream: a KV bucket (one key per policy, history = versions) and an object store
for compiled artifacts. Every replica keeps an in-memory view fed by a KV watch, so several control
planes on one NATS share one state; `on_change` tells the owner when the view moved.

The store is built before the NATS connection exists: it gets a way to the JetStream context
(`jetstream()`) and takes it when opened. Until then it holds no records, and a call that needs
JetStream is refused as unavailable (503).

Every value it writes is signed with the control plane's record key, deletions included
(controlplane.policies.signed), and every value it reads is checked: one that does not verify (written
straight into the bucket by someone without the key), or an older signed version put back over a
newer one or over its deletion, never enters the view, so it is never compiled or served; the version the view held keeps
serving. Each refusal is logged and kept in `refused` (the service reports it, `/health` shows it)
until a trusted value for that key arrives. An unsigned deletion of a key the view holds no trusted
version of is accepted: there is nothing to protect, and it is how an operator clears a refused key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

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
from controlplane.infra.kvwatch import watch_all
from controlplane.infra.nats import after_reconnect
from controlplane.infra.recordkeys import RecordKeys
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.signed import (
    MALFORMED,
    REPLAYED,
    Opened,
    check_deletion,
    open_record,
    seal_deletion,
    seal_record,
)

log = logging.getLogger(__name__)

BUCKET = "groqpolicy_policies"
OBJECTS = "groqpolicy_artifacts"
HISTORY = 64  # JetStream's maximum: the last 64 versions of each policy
PREFIX = "policy."

KV_OPERATION = "KV-Operation"  # the header nats-py's KV reads a delete marker by
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code: the key moved since the revision a write expected
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
    def __init__(self, jetstream: Callable[[], JetStreamContext], replicas: int = 1, *, keys: RecordKeys) -> None:
        self.jetstream, self.replicas = jetstream, replicas
        self.keys = keys  # signs what is written, and decides what read is trusted
        self.refused: dict[str, str] = {}  # KV key -> why its newest value is not used
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
        # the current values first (complete: controlplane.infra.kvwatch), then live updates
        self._watcher, entries = await watch_all(self._kv(), timeout=30)
        changed = False
        for entry in entries:
            changed = self._apply(entry) or changed
        self._watch_task = asyncio.create_task(self._follow(), name="policy-kv-watch")
        return changed

    async def resync(self, attempts: int = 40, delay: float = 0.25) -> None:
        """After a reconnect: the old watch's consumer may be gone with the server. Start a new one
        (retrying while JetStream recovers) and tell the owner if anything changed meanwhile."""
        await self._stop_watch()
        ok, changed = await after_reconnect(self._watch, "policy KV: watch", attempts=attempts, delay=delay)
        if not ok:
            return
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
            changed = self._apply(entry)
            if changed and self.on_change is not None:
                try:
                    await self.on_change()
                except Exception:
                    log.exception("policy KV: reacting to %s failed", entry.key)

    def _apply(self, entry: KeyValue.Entry) -> bool:
        """Take one watched entry into the view if it can be trusted; whether the view changed."""
        if not entry.key.startswith(PREFIX):
            return False
        try:
            rule_id = uuid.UUID(entry.key[len(PREFIX):])
        except ValueError:
            self._refuse(entry.key, entry.revision, Opened(None, MALFORMED, "the key names no policy id"))
            return False
        current = self.view.get(rule_id)
        last = max(current[1] if current else 0, self._deleted.get(rule_id, 0))
        if entry.revision is None or entry.revision <= last:
            return False
        if entry.operation in (KV_DEL, KV_PURGE):
            deletion = check_deletion(entry.key, entry.value, self.keys)
            if deletion.problem and current is not None:
                self._refuse(entry.key, entry.revision, deletion, current)
                return False
            self.refused.pop(entry.key, None)
            self.view.pop(rule_id, None)
            self._deleted[rule_id] = entry.revision
            self._records = None
            return True
        opened = self._opened(entry.key, entry.value, current)
        if opened.record is None:
            self._refuse(entry.key, entry.revision, opened, current)
            return False
        self.refused.pop(entry.key, None)
        self.view[rule_id] = (opened.record, entry.revision)
        self._records = None
        return True

    def _opened(self, key: str, value: bytes | None, current: tuple[PolicyRecord, int] | None) -> Opened:
        """The stored value checked: its signature, and that it does not go back behind the version held
        (nor bring back a policy deleted since this replica started: ids are never reused)."""
        opened = open_record(key, value, self.keys)
        if opened.record is None:
            return opened
        if current is not None and opened.record.version < current[0].version:
            return Opened(None, REPLAYED, f"version {opened.record.version} put back over version {current[0].version}")
        if current is None and opened.record.rule_id in self._deleted:
            return Opened(None, REPLAYED, f"version {opened.record.version} put back after the policy was deleted")
        return opened

    def _refuse(self, key: str, revision: int | None, opened: Opened,
                held: tuple[PolicyRecord, int] | None = None) -> None:
        keeps = f"; version {held[0].version} keeps serving" if held is not None else ""
        message = f"policy {key[len(PREFIX):]} (KV revision {revision}): refused, {opened.problem}: {opened.reason}{keeps}"
        if self.refused.get(key) != message:
            log.error("policy store: %s", message)
        self.refused[key] = message

    # -- writes (each also updates the local view at once: read-your-writes on this replica) ----
    @_unavailable
    async def create(self, record: PolicyRecord) -> int:
        key = key_for(record.rule_id)
        try:
            revision = await self._kv().create(key, seal_record(key, record, self.keys))
        except TimeoutError:
            revision = await self._landed(record)
        self.refused.pop(key, None)  # a trusted value now stands over whatever was refused
        self.view[record.rule_id] = (record, revision)
        self._records = None
        return revision

    @_unavailable
    async def update(self, record: PolicyRecord, last: int) -> int:
        try:
            key = key_for(record.rule_id)
            revision = await self._kv().update(key, seal_record(key, record, self.keys), last=last)
        except KeyWrongLastSequenceError:
            raise StoreConflict(f"policy {record.rule_id}: changed concurrently (expected KV revision {last}); retry") from None
        except TimeoutError:
            revision = await self._landed(record)
        self.refused.pop(key, None)
        self.view[record.rule_id] = (record, revision)
        self._records = None
        return revision

    async def _landed(self, record: PolicyRecord) -> int:
        """After a write whose acknowledgement never came (a publish timing out on a loaded server
        that stored it all the same): the revision of `record` when it is the key's latest trusted
        version (`get`), so the client is not told "unavailable" about a policy that is stored and
        about to be served (and does not retry a create into a second policy); else the timeout
        stands (503)."""
        key, found = key_for(record.rule_id), await self.get(record.rule_id)
        if found is None or found[0] != record:
            raise TimeoutError(f"no acknowledgement, and {key} does not hold this write")
        log.warning("policy store: %s stored at revision %d though its acknowledgement was lost", key, found[1])
        return found[1]

    @_unavailable
    async def delete(self, rule_id: uuid.UUID, last: int) -> None:
        """A signed delete marker, published as nats-py's KV would publish an unsigned one (it takes no body)."""
        key = key_for(rule_id)
        self._kv()  # raises StoreUnavailable before the store is open, like every other write
        headers = {KV_OPERATION: KV_DEL, "Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            seq = (await self.jetstream().publish(f"$KV.{BUCKET}.{key}", seal_deletion(key, self.keys), headers=headers)).seq
        except APIError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            raise StoreConflict(f"policy {rule_id}: changed concurrently (expected KV revision {last}); retry") from None
        except TimeoutError:
            seq = await self._deletion_landed(key)
        self.refused.pop(key, None)
        self.view.pop(rule_id, None)
        self._records = None
        self._deleted[rule_id] = seq

    async def _deletion_landed(self, key: str) -> int:
        """`_landed` for a delete: the revision of the trusted delete marker the key ends in now."""
        try:
            await self._kv().get(key)
        except KeyNotFoundError as exc:  # nats-py raises KeyDeletedError (a subclass) at a marker
            marker = exc.entry
            if marker is not None and marker.revision is not None and not check_deletion(key, marker.value, self.keys).problem:
                log.warning("policy store: %s deleted at revision %d though its acknowledgement was lost", key, marker.revision)
                return marker.revision
        raise TimeoutError(f"no acknowledgement, and {key} is not deleted")

    # -- reads -----------------------------------------------------------------------------
    @_unavailable
    async def get(self, rule_id: uuid.UUID) -> tuple[PolicyRecord, int] | None:
        """The latest trusted version, read from the KV (not the view): fresh across replicas; and the
        KV revision a write must follow.

        When the newest value is refused (see the module's docstring), the version this replica trusts
        comes back instead, with the refused value's revision: an update or delete through the API
        then replaces the refused value."""
        key = key_for(rule_id)
        try:
            entry = await self._kv().get(key)
        except (KeyNotFoundError, KeyDeletedError) as exc:  # nats-py: a delete marker, or no key at all
            marker = exc.entry
            if marker is None or not check_deletion(key, marker.value, self.keys).problem:
                return None
            return self._trusted_instead(rule_id, marker.revision)
        if entry.value is None or entry.revision is None:
            return None
        opened = self._opened(key, entry.value, self.view.get(rule_id))
        if opened.record is None:
            return self._trusted_instead(rule_id, entry.revision)
        # not applied to the view: the watch must still see this revision as new, so that this
        # replica rebuilds its bundle for it (a GET racing ahead of the watch must not swallow it)
        return opened.record, entry.revision

    def _trusted_instead(self, rule_id: uuid.UUID, revision: int | None) -> tuple[PolicyRecord, int] | None:
        held = self.view.get(rule_id)
        return (held[0], revision or held[1]) if held is not None else None

    @_unavailable
    async def history(self, rule_id: uuid.UUID) -> list[PolicyRecord]:
        """Every trusted stored version, oldest first (a refused value is not one)."""
        # Read message by message (`next_by_subj`), not with nats-py's `KeyValue.history`: that is a
        # watch whose "nothing more" marker can overtake entries already on their way, so on a busy
        # host it answered "no versions" for a key that had two.
        key = key_for(rule_id)
        self._kv()  # StoreUnavailable before the store is open
        js, subject = self.jetstream(), f"$KV.{BUCKET}.{key}"
        records: list[PolicyRecord] = []
        seq = 1
        while True:
            try:
                msg = await js.get_msg(f"KV_{BUCKET}", seq=seq, subject=subject, next=True)
            except NotFoundError:
                return records
            seq = (msg.seq or seq) + 1
            if not msg.data or (msg.headers or {}).get(KV_OPERATION) in (KV_DEL, KV_PURGE):
                continue
            opened = open_record(key, msg.data, self.keys)
            if opened.record is not None:
                records.append(opened.record)

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
