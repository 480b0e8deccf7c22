"""Shadows kept beyond a process and shared by every control-plane process: a JetStream KV bucket.

Two kinds of keys, both watched by every process (`controlplane.impact.shadow_sync`):

- `shadow.<rule_id>`: the definition (`SavedShadow`): the candidate as the operator gave it (so a
  process compiles it again against the policies as they are then), its share of traffic, when it
  began, and an id of its own (`id`) that tells this shadow from an earlier one of the same policy.
  Created once when a shadow begins (`create`: of two processes starting a shadow of one policy at
  once, one wins) and deleted when it is promoted or discarded; a process that sees the key appear
  starts comparing, one that sees it deleted stops.
- `count.<rule_id>.<process>`: one process's counters for that shadow (`Counts`), written by it
  alone, at most once a `SAVE_S` while they move. The deployment's counters are the sum over the
  keys whose `shadow` is the definition's id (an older shadow's leftovers are ignored).

Why a key per process, not one shared counter updated by compare-and-set: every process writes a
few times a second, and a shared key would make them retry against each other; a per-process key is
a plain put of absolute values, so a retried write never counts twice and a lost one is made good by
the next. A process that dies leaves its key behind, so its comparisons stay in the sum; a restarted
process takes a new key. `compared`/`diverged`/`errors` on the definition are what shadows saved
before counters moved to their own keys (read as a base, never written again).

The bootstrap identity creates the bucket (`ensure`), the control plane reads, writes and watches
keys in it (controlplane.infra.natsauth).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bridge.kernel.errors import Conflict, Unavailable
from controlplane.impact.candidate import CandidateSpec
from controlplane.infra.kvwatch import live_keys

log = logging.getLogger(__name__)

BUCKET = "groqpolicy_shadows"
SAVE_S = 1.0
SHADOW, COUNT = "shadow.", "count."
P = ParamSpec("P")
R = TypeVar("R")


class SavedShadow(msgspec.Struct, kw_only=True):
    spec: CandidateSpec
    sample: float
    started_at: float
    compared: int = 0
    diverged: int = 0
    errors: int = 0
    by: str = ""
    id: str = ""


class Counts(msgspec.Struct, kw_only=True, frozen=True):
    shadow: str  # the definition's id these counters belong to
    compared: int = 0
    diverged: int = 0
    errors: int = 0


decode_saved = msgspec.json.Decoder(SavedShadow).decode
decode_counts = msgspec.json.Decoder(Counts).decode


def _key(rule_id: uuid.UUID | str) -> str:
    return f"{SHADOW}{rule_id}"


def count_key(rule_id: uuid.UUID | str, process: str) -> str:
    return f"{COUNT}{rule_id}.{process}"


async def ensure(nc: NatsClient, replicas: int = 1) -> KeyValue:
    """Get or create the bucket (the bootstrap's step; an open server's control plane runs it too)."""
    js = nc.jetstream(timeout=5)
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=BUCKET, history=1, storage=StorageType.FILE, replicas=replicas,
            description="groqpolicy: shadow-mode candidates and their counters"))


def _reachable(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """JetStream unreachable (a reconnect, NATS stopped) or refusing (a value over the server's
    max_payload, a full store) is a 503 that says so, never a 500 (as `controlplane.evaljobs.shared`)."""

    @functools.wraps(call)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except (nats.errors.Error, TimeoutError) as exc:
            raise Unavailable(f"shadows: JetStream unreachable or refused ({type(exc).__name__}: {exc}); "
                              "retry") from None

    return wrapped


class ShadowBucket:
    def __init__(self, client: Callable[[], NatsClient], replicas: int = 1) -> None:
        self.client, self.replicas = client, replicas
        self._kv: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await ensure(self.client(), self.replicas)
            except (nats.errors.Error, TimeoutError) as exc:
                raise Unavailable(f"shadows: bucket {BUCKET} is missing and could not be created "
                                  f"({type(exc).__name__}); the bootstrap creates it") from None
        return self._kv

    @_reachable
    async def load(self) -> dict[str, SavedShadow | None]:
        """Every saved shadow by rule id (None: a value that does not read, reported by the caller)."""
        kv = await self.bucket()
        keys = await live_keys(kv)  # not kv.keys(): controlplane.infra.kvwatch says why
        found: dict[str, SavedShadow | None] = {}
        for key in keys:
            if not key.startswith(SHADOW):
                continue
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue  # removed meanwhile (another replica promoted or discarded it)
            try:
                found[key.removeprefix(SHADOW)] = decode_saved(entry.value or b"")
            except msgspec.DecodeError:
                found[key.removeprefix(SHADOW)] = None
        return found

    @_reachable
    async def save(self, rule_id: uuid.UUID | str, saved: SavedShadow) -> None:
        kv = await self.bucket()
        await kv.put(_key(rule_id), msgspec.json.encode(saved))

    @_reachable
    async def create(self, rule_id: uuid.UUID | str, saved: SavedShadow) -> None:
        """The definition, unless another process saved one for this policy first (then Conflict)."""
        kv = await self.bucket()
        try:
            await kv.create(_key(rule_id), msgspec.json.encode(saved))
        except KeyWrongLastSequenceError:
            raise Conflict(f"shadow: policy {rule_id} has a shadow already, started by another "
                           "control-plane process (promote or discard it first)") from None

    @_reachable
    async def save_counts(self, rule_id: uuid.UUID | str, process: str, counts: Counts) -> None:
        kv = await self.bucket()
        await kv.put(count_key(rule_id, process), msgspec.json.encode(counts))

    @_reachable
    async def remove(self, rule_id: uuid.UUID | str, processes: tuple[str, ...] = ()) -> None:
        """The definition (Unavailable if it cannot be deleted: the shadow goes on), then the counters
        of `processes` (those the caller has seen), best effort: once the definition is gone the shadow
        has ended, and a counter left behind names its id, which no later shadow has."""
        kv = await self.bucket()
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(_key(rule_id))
        for key in (count_key(rule_id, p) for p in processes):
            try:
                await kv.delete(key)
            except KeyNotFoundError:
                pass
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("shadow of %s: counters %s not removed (%s)", rule_id, key, exc)
