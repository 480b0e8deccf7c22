"""Shadows kept beyond a process: their definitions and counters in a JetStream KV bucket.

One key per shadowed policy (`shadow.<rule_id>`) holding a `SavedShadow`: the candidate as the
operator gave it (so a restart compiles it again against the policies as they are then), its share
of traffic, when it started and its counters. On a bucket (not the local state directory) because
every control-plane replica serves the same policies; each one that starts restores the same
shadows. The bootstrap identity creates the bucket (`ensure`), the control plane only reads and
writes keys in it (controlplane.infra.natsauth).

Counters are written by the shadow mode at most once a `SAVE_S` while they move, so a restart loses
at most that much of them; a definition is written when a shadow begins and removed when it is
promoted or discarded, both before the operator gets the answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from bridge.kernel.errors import Unavailable
from controlplane.impact.candidate import CandidateSpec

log = logging.getLogger(__name__)

BUCKET = "groqpolicy_shadows"
SAVE_S = 1.0


class SavedShadow(msgspec.Struct, kw_only=True):
    spec: CandidateSpec
    sample: float
    started_at: float
    compared: int = 0
    diverged: int = 0
    errors: int = 0
    by: str = ""


_decode = msgspec.json.Decoder(SavedShadow).decode


def _key(rule_id: uuid.UUID | str) -> str:
    return f"shadow.{rule_id}"


async def ensure(nc: NatsClient, replicas: int = 1) -> KeyValue:
    """Get or create the bucket (the bootstrap's step; an open server's control plane runs it too)."""
    js = nc.jetstream(timeout=5)
    try:
        return await js.key_value(BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=BUCKET, history=1, storage=StorageType.FILE, replicas=replicas,
            description="groqpolicy: shadow-mode candidates and their counters"))


class ShadowBucket:
    def __init__(self, client: Callable[[], NatsClient], replicas: int = 1) -> None:
        self.client, self.replicas = client, replicas
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await ensure(self.client(), self.replicas)
            except nats.errors.Error as exc:
                raise Unavailable(f"shadows: bucket {BUCKET} is missing and could not be created "
                                  f"({type(exc).__name__}); the bootstrap creates it") from None
        return self._kv

    async def load(self) -> dict[str, SavedShadow | None]:
        """Every saved shadow by rule id (None: a value that does not read, reported by the caller)."""
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        found: dict[str, SavedShadow | None] = {}
        for key in keys:
            rule_id = key.removeprefix("shadow.")
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue  # removed meanwhile (another replica promoted or discarded it)
            try:
                found[rule_id] = _decode(entry.value or b"")
            except msgspec.DecodeError:
                found[rule_id] = None
        return found

    async def save(self, rule_id: uuid.UUID | str, saved: SavedShadow) -> None:
        kv = await self._bucket()
        await kv.put(_key(rule_id), msgspec.json.encode(saved))

    async def remove(self, rule_id: uuid.UUID | str) -> None:
        kv = await self._bucket()
        try:
            await kv.delete(_key(rule_id))
        except KeyNotFoundError:
            pass
