"""`bridge.inference.micro.TaskService` on a real nats-server: answers from tasks never hold up the
endpoint, errors are nats.micro error replies with the family's body, and `stop` waits for the
answers in progress."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import nats.micro.request
import pytest
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from bridge.inference.micro import TaskService, respond_error
from bridge.kernel.errors import ERROR_CODE_HEADER, ERROR_HEADER, Conflict


@pytest.fixture
async def nc(nats_server):
    client = await nats.connect(nats_server.extra["url"])
    try:
        yield client
    finally:
        await client.close()


def test_the_kernels_error_headers_are_nats_micros():
    assert (ERROR_HEADER, ERROR_CODE_HEADER) == (nats.micro.request.ERROR_HEADER, nats.micro.request.ERROR_CODE_HEADER)


async def test_detached_answers_do_not_queue_behind_a_slow_one(nc):
    started: list[str] = []

    async def serve(request: Request) -> None:
        started.append(request.data.decode())
        await asyncio.sleep(0.3 if request.data == b"slow" else 0)
        await request.respond(b"done " + request.data)

    svc = TaskService(nc, ServiceConfig(name="micro-test", version="0.0.1", queue_group="micro-test"))
    svc.add(EndpointConfig(name="ask", subject="micro.ask", handler=svc.detached(serve)))
    await svc.start()
    try:
        slow = asyncio.ensure_future(nc.request("micro.ask", b"slow", timeout=2))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        fast = await nc.request("micro.ask", b"fast", timeout=2)
        assert fast.data == b"done fast" and time.perf_counter() - t0 < 0.2  # not after the slow one
        assert svc.in_progress == 1
        assert (await slow).data == b"done slow"
    finally:
        await svc.stop()
    assert started == ["slow", "fast"]


async def test_errors_are_micro_error_replies_with_the_family_body(nc):
    async def serve(request: Request) -> None:
        await respond_error(request, Conflict("revision\r\nchanged", code="stale"))

    svc = TaskService(nc, ServiceConfig(name="micro-test", version="0.0.1"))
    svc.add(EndpointConfig(name="ask", subject="micro.err", handler=svc.detached(serve)))
    await svc.start()
    try:
        msg = await nc.request("micro.err", b"", timeout=2)
    finally:
        await svc.stop()
    assert msg.headers[ERROR_CODE_HEADER] == "409"
    assert msg.headers[ERROR_HEADER] == "revision changed"  # one header line
    assert msgspec.json.decode(msg.data) == {"error": {"type": "Conflict", "message": "revision\r\nchanged", "code": "stale"}}


async def test_stop_waits_for_answers_in_progress(nc):
    finished = asyncio.Event()

    async def serve(request: Request) -> None:
        await asyncio.sleep(0.2)
        await request.respond(b"late but delivered")
        finished.set()

    svc = TaskService(nc, ServiceConfig(name="micro-test", version="0.0.1"))
    svc.add(EndpointConfig(name="ask", subject="micro.stop", handler=svc.detached(serve)))
    await svc.start()
    pending = asyncio.ensure_future(nc.request("micro.stop", b"", timeout=2))
    await asyncio.sleep(0.05)
    await svc.stop()
    assert finished.is_set() and svc.in_progress == 0
    assert (await pending).data == b"late but delivered"
