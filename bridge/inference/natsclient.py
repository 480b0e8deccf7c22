"""What the project adds to nats-py's client: a flush that confirms what was sent before it.

nats-py's `flush()` (2.16.0, the same in its newest source) writes the PING straight to the socket,
ahead of commands still in its buffer. `tests/test_nats_client.py` shows it against a real
nats-server.
"""

from __future__ import annotations

from nats.aio.client import Client as NatsClient


async def confirmed(nc: NatsClient, timeout: int = 10) -> None:
    """Return once NATS has processed every command sent on `nc` so far (its subscriptions and
    publishes). nats-py's `flush()` writes its PING straight to the socket while the commands before
    it may still wait in the client's buffer for its flusher task, so the PONG can come back before
    they reach the server: with nats-py 2.16.0, ~2% of subscriptions were not registered yet when
    `flush()` returned (`tests/test_nats_client.py`). The flusher has written them by the time a
    PONG is back (it was woken first, the PONG needs a round trip), so a second PING follows them."""
    await nc.flush(timeout)
    await nc.flush(timeout)
