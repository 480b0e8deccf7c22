"""Judgment caches: L1 in this process (bounded LRU with TTL), L2 in a JetStream KV bucket
shared by every worker. Keys are SHA-256 over the canonical request, so they are valid KV keys."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import nats.errors
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from bridge.inference.prompts import TEMPLATE_VERSION
from bridge.inference.wire import InferReply, InferRequest

log = logging.getLogger("groqpolicy.cache")
V = TypeVar("V")
_key_encoder = msgspec.json.Encoder(order="sorted")


def cache_key(tier: str, req: InferRequest) -> str:
    """Everything that changes the model's answer, and nothing else (not the deadline)."""
    key = (TEMPLATE_VERSION, tier, req.model, req.policy, req.question, req.context, req.max_tokens, req.temperature,
           req.strict_schema)
    raw = _key_encoder.encode(key if req.answer == "verdict" else (*key, req.answer))  # verdicts' keys as before
    return hashlib.sha256(raw).hexdigest()


class TTLCache(Generic[V]):
    """Bounded LRU whose entries also expire. `get` is a dict lookup plus a clock read."""

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.clock = clock
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        item = self._data.get(key)
        if item is None:
            self.misses += 1
            return None
        if item[0] <= self.clock():
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[1]

    def ttl_left(self, key: str) -> float:
        item = self._data.get(key)
        return max(0.0, item[0] - self.clock()) if item else 0.0

    def set(self, key: str, value: V, ttl_s: float) -> None:
        self._data[key] = (self.clock() + ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class L2Entry(msgspec.Struct):
    expires_at: float
    """Unix seconds; the bucket's own TTL is only an upper bound shared by all tiers."""
    reply: InferReply


class KVCache:
    """L2: one JetStream KV bucket shared by all workers."""

    BUCKET = "groq_judgments"

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._enc = msgspec.json.Encoder()
        self._dec = msgspec.json.Decoder(L2Entry)

    @classmethod
    async def ensure(cls, js: JetStreamContext, bucket: str = BUCKET, ttl_s: float = 3600.0) -> KeyValue:
        """Get or create the bucket: what NATS's bootstrap runs (no worker may create streams)."""
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            return await js.create_key_value(bucket=bucket, ttl=ttl_s, history=1,
                                             description="groqpolicy: cached Groq judgments (L2)")

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = BUCKET, ttl_s: float = 3600.0) -> KVCache | None:
        """The shared L2 cache, or None when the bucket is missing and this identity may not create it.

        A worker on an authenticated server holds no create right, so a bucket that nobody created
        (the bootstrap was skipped, an admin's cluster without it) would otherwise stop it from
        serving at all; L2 is an optimisation, so the worker serves without it and says so."""
        try:
            return cls(await js.key_value(bucket))
        except BucketNotFoundError:
            pass
        try:
            return cls(await cls.ensure(js, bucket, ttl_s))
        except nats.errors.Error as exc:  # refused (a timeout) or JetStream's own error
            log.warning("judgment cache: bucket %s is missing and could not be created (%s); serving without the "
                        "shared L2 cache. `groqpolicy up` creates it at start; on a cluster you run, ask its admin "
                        "to create it", bucket, type(exc).__name__)
            return None

    async def get(self, key: str) -> tuple[InferReply, float] | None:
        """(reply, seconds left) or None; a broken entry is a miss."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            self.misses += 1
            return None
        except Exception:  # noqa: BLE001 - L2 is an optimisation: its failure is a miss
            self.errors += 1
            self.misses += 1
            return None
        try:
            item = self._dec.decode(entry.value or b"")
        except msgspec.MsgspecError:
            self.errors += 1
            self.misses += 1
            return None
        left = item.expires_at - time.time()
        if left <= 0:
            self.misses += 1
            return None
        self.hits += 1
        return item.reply, left

    async def put(self, key: str, reply: InferReply, ttl_s: float) -> None:
        try:
            await self.kv.put(key, self._enc.encode(L2Entry(expires_at=time.time() + ttl_s, reply=reply)))
        except Exception:  # noqa: BLE001 - L2 is an optimisation: a lost write is a later miss
            self.errors += 1
