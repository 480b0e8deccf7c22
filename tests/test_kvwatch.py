"""controlplane.infra.kvwatch against a real nats-server: a bucket's current values and live keys,
complete even when nats-py's "initial values done" marker comes before the values (as it does on
a busy host), which made `KeyValue.keys`/`history` answer "no keys" for keys that existed."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from controlplane.infra.kvwatch import live_keys, watch_all


async def _bucket(url: str, name: str, history: int = 1) -> tuple[nats.NATS, KeyValue]:
    nc = await nats.connect(url)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=name, history=history))
    return nc, kv


def _marker_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every watch hand over its None marker before any value: nats-py's race, made certain."""
    real = KeyValue.watchall

    async def watchall(self: KeyValue, **kw: object) -> KeyValue.KeyWatcher:
        watcher = await real(self, **kw)
        await watcher._updates.put(None)  # noqa: SLF001 - the queue nats-py hands values over by
        return watcher

    monkeypatch.setattr(KeyValue, "watchall", watchall)


def test_every_value_and_only_live_keys(nats_server):
    async def run() -> None:
        nc, kv = await _bucket(nats_server.extra["url"], "kvw_all")
        try:
            assert await live_keys(kv, timeout=5) == []  # empty: answers at once, no error
            for i in range(300):
                await kv.put(f"k.{i}", str(i).encode())
            for i in range(0, 300, 3):
                await kv.delete(f"k.{i}")
            await kv.put("k.0", b"back")  # deleted, then written again: live
            keys = await live_keys(kv, timeout=10)
            assert sorted(keys) == sorted({f"k.{i}" for i in range(300) if i % 3} | {"k.0"})

            watcher, entries = await watch_all(kv, timeout=10)
            latest = {e.key: e.value for e in entries}
            assert len(latest) == 300 and latest["k.1"] == b"1" and latest["k.0"] == b"back"
            await kv.put("k.new", b"later")  # the same watcher then follows changes
            entry = await watcher.updates(timeout=5)
            assert entry is not None and (entry.key, entry.value) == ("k.new", b"later")
            await watcher.stop()
        finally:
            await nc.close()

    asyncio.run(run())


def test_complete_when_the_marker_comes_first(nats_server, monkeypatch):
    _marker_first(monkeypatch)

    async def run() -> None:
        nc, kv = await _bucket(nats_server.extra["url"], "kvw_race")
        try:
            for i in range(50):
                await kv.put(f"k.{i}", b"v")
            with pytest.raises(nats.js.errors.NoKeysError):
                await kv.keys()  # nats-py's own listing, under the same race: answers none
            assert len(await live_keys(kv, timeout=10)) == 50
            many = await asyncio.gather(*(live_keys(kv, timeout=10) for _ in range(10)))
            assert all(len(k) == 50 for k in many)
        finally:
            await nc.close()

    asyncio.run(run())
