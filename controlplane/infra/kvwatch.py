"""What a JetStream KV bucket holds now, read through a watch that cannot end early.

nats-py ends a watch's initial values with a None marker. It decides when to send it from the
consumer's pending count right after creating the consumer: when the server has already pushed
every value but the subscription has not handed them over yet, the count is 0 and the marker comes
*first*. On a busy host that made `KeyValue.history` and `KeyValue.keys` answer "no keys" for keys
that existed, and a watch's "initial values" come back empty.

The fix here: read the bucket's last stream sequence before the watch starts. That message is the
latest of its key, so a watch of every key always delivers it; the snapshot is complete once the
marker has come *and* a value at or past that sequence has been seen.
"""

from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

log = logging.getLogger(__name__)

# after the marker, how long the values already received may take to be handed over; past it the
# watch goes on with what it has (e.g. the last message expired between the two reads), as before
STRAGGLER_GRACE_S = 5.0


async def watch_all(kv: KeyValue, *, timeout: float = 30.0,
                    meta_only: bool = False) -> tuple[KeyValue.KeyWatcher, list[KeyValue.Entry]]:
    """Start a watch of every key; with it, the values the bucket holds now (deletions included),
    in stream order. The watcher then delivers only later changes. Raises nats' TimeoutError
    when the initial values do not come within `timeout` seconds."""
    status = await kv.status()
    state = status.stream_info.state
    last = state.last_seq if state.messages else 0
    watcher = await kv.watchall(meta_only=meta_only)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    entries: list[KeyValue.Entry] = []
    seen, marker_at = 0, None
    while marker_at is None or seen < last:
        now = loop.time()
        if marker_at is not None and now - marker_at > STRAGGLER_GRACE_S:
            log.warning("KV %s: values up to sequence %d did not arrive (seen %d); going on with what came",
                        status.bucket, last, seen)
            break
        wait = deadline - now if marker_at is None else min(deadline - now, STRAGGLER_GRACE_S)
        if wait <= 0:
            await watcher.stop()
            raise NatsTimeout
        try:
            entry = await watcher.updates(timeout=wait)
        except NatsTimeout:
            if marker_at is None:
                await watcher.stop()
                raise
            continue
        if entry is None:
            marker_at = loop.time()
        else:
            entries.append(entry)
            seen = max(seen, entry.revision or 0)
    return watcher, entries


async def live_keys(kv: KeyValue, *, timeout: float = 30.0) -> list[str]:
    """The keys that hold a value now (deleted or purged ones left out); [] for an empty bucket."""
    watcher, entries = await watch_all(kv, timeout=timeout, meta_only=True)
    try:
        await watcher.stop()
    except Exception:  # noqa: BLE001 - the connection may be gone; the answer is complete already
        pass
    latest: dict[str, str | None] = {}
    for entry in entries:
        latest[entry.key] = entry.operation
    return [key for key, op in latest.items() if op not in (KV_DEL, KV_PURGE)]
