"""What the project adds to nats-py's client: a flush that confirms what was sent before it, and a
close that does not wait for a NATS that answers nothing.

Both work around the client's own behaviour (nats-py 2.16.0, the same in its newest source): its
`flush()` writes the PING straight to the socket, ahead of commands still in its buffer, and its
`drain()` ignores a cancellation, then waits up to 10 s for a flush. `tests/test_nats_client.py`
shows each against a real nats-server.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client as NatsClient

from bridge.kernel.tasks import retrieve_outcome

log = logging.getLogger("groqpolicy.nats")

DRAIN_WAIT_S = 1  # s, whole (nats-py's flush takes an int): for the ping, then for the drain (a few round trips)
CLOSE_WAIT_S = 0.5  # closing without a drain only hands what is buffered to the kernel


async def confirmed(nc: NatsClient, timeout: int = 10) -> None:
    """Return once NATS has processed every command sent on `nc` so far (its subscriptions and
    publishes); at most `timeout` twice. nats-py's `flush()` writes its PING straight to the socket
    while the commands before it may still wait in the client's buffer for its flusher task, so the
    PONG can come back before they reach the server: with nats-py 2.16.0, ~2% of subscriptions were
    not registered yet when `flush()` returned (`tests/test_nats_client.py`). The flusher has written
    them by the time a PONG is back (it was woken first, the PONG needs a round trip), so a second
    PING follows them."""
    await nc.flush(timeout)
    await nc.flush(timeout)


async def drain_or_close(nc: NatsClient) -> None:
    """Drain `nc` (its subscriptions end, what it buffered is sent) when NATS answers a ping within
    DRAIN_WAIT_S, else close it at once; a drain that fails, takes longer than DRAIN_WAIT_S or is
    cut short by a cancellation (a stop whose time ran out) is followed by a close too. Why not just
    drain: nats-py's drain ignores a cancellation and then waits up to 10 s for a flush, which a NATS
    that takes messages and answers none (a frozen server, a partition TCP has not noticed) never
    gives, and a process's stop would wait with it, past its supervisor's grace."""
    if nc.is_closed:
        return
    try:
        await nc.flush(timeout=DRAIN_WAIT_S)  # while reconnecting it returns at once; the drain then fails
    except nats.errors.Error as exc:  # FlushTimeoutError
        log.warning("NATS: no answer to a ping (%r); closing the connection without draining it", exc)
        await _close(nc)
        return
    except asyncio.CancelledError:
        await _close(nc)
        raise
    drain = asyncio.ensure_future(nc.drain())
    drain.add_done_callback(retrieve_outcome)  # logged below when it is seen to fail
    try:
        await asyncio.wait({drain}, timeout=DRAIN_WAIT_S)
    finally:
        drained = drain.done() and not drain.cancelled() and drain.exception() is None  # the drain closes it
        if not drained:
            if not drain.done():
                log.warning("NATS: the connection did not drain (no answer in time, or the stop's time ran out); "
                            "closing it without draining")
            elif not drain.cancelled():
                log.warning("NATS: draining the connection failed (%r); closing it", drain.exception())
            await _close(nc)
            drain.cancel()


async def _close(nc: NatsClient) -> None:
    try:
        await asyncio.wait_for(nc.close(), CLOSE_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - e.g. the server is gone and publishes were pending
        log.warning("NATS: closing the connection failed (%r); dropping it", exc)

