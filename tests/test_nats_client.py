"""What the project adds to nats-py, against a real nats-server: a flush that confirms what was sent
before it (`bridge.inference.natsclient.confirmed`); closing a connection at a stop (`drain_or_close`):
drained while NATS answers, closed at once while it answers nothing (SIGSTOP: the connection stays
up, the kernel takes what is sent), closed too when the caller is cancelled meanwhile; and a
nats.micro service's end (`bridge.inference.micro.end_service`), which does not wait for a NATS that
answers nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
import nats.errors
import pytest
from nats.micro.service import EndpointConfig, ServiceConfig

from bridge.inference.micro import UNSUBSCRIBE_WAIT_S, TaskService
from bridge.inference.natsclient import DRAIN_WAIT_S, confirmed, drain_or_close
from tests.bridge_helpers import frozen


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


async def test_a_connection_to_an_answering_nats_is_drained(nats_server):
    url = nats_server.extra["url"]
    handled: list[bytes] = []
    first = asyncio.Event()

    async def slow(msg) -> None:
        first.set()
        await asyncio.sleep(0.02)
        handled.append(msg.data)

    nc, other = await nats.connect(url), await nats.connect(url)
    try:
        await nc.subscribe("drain.test", cb=slow)
        await confirmed(nc)
        for i in range(5):
            await other.publish("drain.test", b"%d" % i)
        await confirmed(other)
        await asyncio.wait_for(first.wait(), 5)  # the first one in its handler, the others waiting
        await drain_or_close(nc)
        assert nc.is_closed and handled == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        await other.close()


async def test_a_connection_to_a_frozen_nats_is_closed_without_waiting_for_it(nats_server, caplog):
    nc = await nats.connect(nats_server.extra["url"])
    await nc.subscribe("frozen.test")
    await confirmed(nc)
    with frozen(nats_server), caplog.at_level(logging.WARNING, logger="groqpolicy.nats"):
        await nc.publish("frozen.test", b"x")  # the kernel takes it; nobody answers
        t0 = time.monotonic()
        await drain_or_close(nc)  # nats-py's own drain: 10 s and more here
        took = time.monotonic() - t0
    assert nc.is_closed
    assert took < DRAIN_WAIT_S + 1.5
    assert "no answer to a ping" in caplog.text and "closing the connection without draining it" in caplog.text


async def test_a_close_cut_short_by_a_cancellation_in_its_ping_still_closes(nats_server):
    nc = await nats.connect(nats_server.extra["url"])
    await nc.subscribe("cut.test")
    await confirmed(nc)
    with frozen(nats_server):
        task = asyncio.ensure_future(drain_or_close(nc))
        await asyncio.sleep(0.05)
        task.cancel()
        t0 = time.monotonic()
        await asyncio.gather(task, return_exceptions=True)
        assert time.monotonic() - t0 < 2 and task.cancelled()  # the cancellation went through
        assert nc.is_closed and nc._reading_task.done()  # and nats-py's close went to its end


@pytest.mark.parametrize("cancel_after_s", [None, 0.5])
async def test_a_drain_that_does_not_end_in_time_is_followed_by_a_close(nats_server, caplog, cancel_after_s):
    """NATS answers, but a handler holds a message for a minute (a drain waits for it): closed after
    DRAIN_WAIT_S, or when the caller is cancelled before."""
    url = nats_server.extra["url"]
    nc, other = await nats.connect(url), await nats.connect(url)
    try:
        async def hold(msg) -> None:
            await asyncio.sleep(60)

        await nc.subscribe("held.test", cb=hold)
        await confirmed(nc)
        await other.publish("held.test", b"x")
        await confirmed(other)
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="groqpolicy.nats"):
            task = asyncio.ensure_future(drain_or_close(nc))
            if cancel_after_s is not None:
                await asyncio.sleep(cancel_after_s)
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        took = time.monotonic() - t0
        assert nc.is_closed and nc._reading_task.done()
        assert task.cancelled() is (cancel_after_s is not None)
        assert "did not drain (no answer in time, or the stop's time ran out)" in caplog.text
        if cancel_after_s is None:
            assert DRAIN_WAIT_S <= took < DRAIN_WAIT_S + 1.5
        else:
            assert took < cancel_after_s + 1.0
    finally:
        await other.close()


async def test_a_service_s_end_does_not_wait_for_a_frozen_nats(nats_server, caplog):
    """A nats.micro service's stop drains its subscriptions, each drain ending with a flush: 5 s
    and more with NATS frozen, for a stop that then goes on to close the connection."""
    nc = await nats.connect(nats_server.extra["url"])
    service = TaskService(nc, ServiceConfig(name="close-test", version="0.0.1"),
                          [EndpointConfig(name="echo", subject="close.echo", handler=_echo)])
    await service.start()
    try:
        with frozen(nats_server), caplog.at_level(logging.WARNING, logger="bridge.inference.micro"):
            t0 = time.monotonic()
            await service.stop()
            assert time.monotonic() - t0 < UNSUBSCRIBE_WAIT_S + 1
        assert "close-test: NATS does not answer" in caplog.text
    finally:
        await nc.close()


async def _echo(request) -> None:
    await request.respond(request.data)
