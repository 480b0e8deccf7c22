"""What the project adds to nats-py, against a real nats-server: a flush that confirms what was sent
before it (`bridge.inference.natsclient.confirmed`)."""

from __future__ import annotations

import nats
import nats.errors

from bridge.inference.natsclient import confirmed


async def test_a_flush_confirms_what_was_sent_before_it(nats_server):
    """Subscribed on one connection, published on another: with nats-py's `flush()` after the
    subscribe, 0 to 20-odd of the 300 were lost per run here (its PING overtook the SUB: the server's
    trace shows the PUB before the SUB); with `confirmed`, none in any run."""
    url = nats_server.extra["url"]
    a, b = await nats.connect(url), await nats.connect(url)
    try:
        lost = []
        for i in range(300):
            sub = await a.subscribe(f"confirm.{i}")
            await confirmed(a)
            await b.publish(f"confirm.{i}", b"x")
            await confirmed(b)
            try:
                await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                lost.append(i)
            await sub.unsubscribe()
        assert lost == []
    finally:
        await a.close()
        await b.close()
