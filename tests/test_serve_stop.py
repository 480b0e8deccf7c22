"""A `serve` process stopped with NATS gone, or frozen (it takes messages and answers none): within
the supervisor's grace, every line of its stop written, nothing it answered lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, wait_for_port
from controlplane.ops.serving import Server, log_records_written
from tests.bridge_helpers import frozen
from tests.controlplane_helpers import ADMIN_HEADERS, TEST_TOKENS

GRACE_S = 10.0  # ManagedProcess.stop: SIGTERM, then SIGKILL after this long
BODY = {"input_context": {"principal": "alice"}, "constitutional_hash": CONSTITUTIONAL_HASH}


def _serve(tmp_path: Path, nats_url: str, port: int, log_name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env.update(GROQPOLICY_NATS_URL=nats_url, GROQPOLICY_TOKENS=TEST_TOKENS, GROQPOLICY_RATE_LIMIT="off")
    with open(tmp_path / log_name, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(port),
                                 "--state-dir", str(tmp_path / "state"), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _evaluator_ready(client: httpx.Client) -> str:
    deadline = time.monotonic() + 60
    while (r := client.post("/api/v1/evaluate", json=BODY)).status_code == 503:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    return str(r.json()["evaluation_id"])


def _first_evaluation_appended(client: httpx.Client) -> str:
    """The id of an evaluation answered once the evaluator is ready, after JetStream has its record."""
    answered = _evaluator_ready(client)
    deadline = time.monotonic() + 30
    while not _evaluation_ids(client):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return answered


def _evaluation_ids(client: httpx.Client) -> list[str]:
    """The evaluations in the audit trail, oldest first (the start's own records have none)."""
    r = client.get("/api/v1/audit", params={"limit": 100})
    return [g["record"]["evaluation_id"] for g in r.json().get("records", []) if g["record"]["evaluation_id"]]


@pytest.mark.slow
def test_a_stop_with_nats_gone_ends_within_the_grace_says_what_it_left_and_loses_nothing(tmp_path):
    ns = start_nats(tmp_path / "nats")
    nats_port = ns.extra["port"]
    port = free_port()
    proc = _serve(tmp_path, ns.extra["url"], port, "first.log")
    try:
        wait_for_port(port, timeout=90, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=30) as client:
            served = [_first_evaluation_appended(client)]
            ns.kill()
            for _ in range(3):  # answered from the spool while JetStream is away
                r = client.post("/api/v1/evaluate", json=BODY)
                assert r.status_code == 200, r.text
                served.append(r.json()["evaluation_id"])
        proc.send_signal(signal.SIGTERM)
        proc.wait(GRACE_S)  # before the supervisor's SIGKILL (TimeoutExpired otherwise)
        log = (tmp_path / "first.log").read_text()
        # the stop's own lines are in the log: written before uvicorn ended the process
        assert "audit trail: 3 spooled record(s) not appended at stop; they stay in the spool" in log, log[-3000:]
        assert "last checkpoint not taken: NATS is not connected" in log, log[-3000:]
        # buffered at the stop, or taken by a flush that was waiting for JetStream when the stop came
        # (in one line or two; the first evaluation's entry too when its flush was not answered in time)
        dropped = sum(int(n) for n in re.findall(r"replay store: (\d+) entries dropped", log))
        assert dropped in (3, 4), log[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        ns.stop()
    ns = start_nats(tmp_path / "nats", port=nats_port)
    try:
        _restart_holds_every_answer(tmp_path, ns.extra["url"], port, served)
    finally:
        ns.stop()


def _restart_holds_every_answer(tmp_path: Path, nats_url: str, port: int, served: list[str]) -> None:
    """A second `serve` on the same state: the evaluations the first one answered are in the audit
    trail, in order (resumed from the spool at start), and the trail verifies."""
    proc = _serve(tmp_path, nats_url, port, "second.log")
    try:
        wait_for_port(port, timeout=90, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=30) as client:
            deadline = time.monotonic() + 30
            while len(evaluations := _evaluation_ids(client)) < len(served):
                assert time.monotonic() < deadline, evaluations
                time.sleep(0.2)
            assert evaluations == served
            assert client.get("/api/v1/audit/verify").json()["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(GRACE_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_stop_with_nats_frozen_ends_within_the_grace_and_loses_nothing(tmp_path, nats_server):
    """nats-server stopped with SIGSTOP: the connection stays up, the kernel takes what is sent and
    nothing answers (a stuck server, a partition TCP has not noticed). Each part of the stop that
    waits on NATS would wait out its own timeout: over 40 s in all before the stop had one budget."""
    ns = nats_server
    port = free_port()
    proc = _serve(tmp_path, ns.extra["url"], port, "first.log")
    try:
        wait_for_port(port, timeout=90, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ADMIN_HEADERS, timeout=30) as client:
            served = [_first_evaluation_appended(client)]
            with frozen(ns):
                for _ in range(3):  # answered: the records are in the spool, JetStream gets them later
                    r = client.post("/api/v1/evaluate", json=BODY)
                    assert r.status_code == 200, r.text
                    served.append(r.json()["evaluation_id"])
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(GRACE_S)  # TimeoutExpired before the stop had a budget
                took = time.monotonic() - started
        log = (tmp_path / "first.log").read_text()
        assert "audit trail: 3 spooled record(s) not appended at stop; they stay in the spool" in log, log[-3000:]
        assert "cut off after" in log, log[-3000:]  # what still waited on NATS when the stop's budget was spent
        assert took < GRACE_S - 2, log[-3000:]  # room left for uvicorn's own stop of open connections
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _restart_holds_every_answer(tmp_path, ns.extra["url"], port, served)


class _SlowHandler(logging.Handler):
    """Writes a record in 10 ms; holds on "stuck" until released."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []
        self.unstuck = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "stuck":
            self.unstuck.wait(30)
        time.sleep(0.01)
        self.written.append(record.getMessage())


@contextlib.contextmanager
def _queued_logger(name: str) -> Iterator[tuple[logging.Logger, _SlowHandler]]:
    """A logger whose records go through a queue listener, as Litestar sets up the root logger."""
    slow = _SlowHandler()
    q: queue.Queue[logging.LogRecord] = queue.Queue()
    handler = logging.handlers.QueueHandler(q)
    listener = logging.handlers.QueueListener(q, slow)
    handler.listener = listener  # type: ignore[attr-defined] - where Litestar's handler keeps its listener
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    listener.start()
    try:
        yield logger, slow
    finally:
        slow.unstuck.set()
        listener.stop()
        logger.removeHandler(handler)


def test_the_server_s_shutdown_returns_once_what_the_application_s_stop_logged_is_written():
    """uvicorn raises the stop's signal again once `Server.shutdown` has returned: what is still
    queued then is never written. 20 records at 10 ms each, logged by the application's stop."""
    with _queued_logger("tests.serve_stop.app") as (logger, slow):
        async def app(scope, receive, send):  # the lifespan protocol only: start, then a stop that logs
            assert scope["type"] == "lifespan"
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for i in range(20):
                        logger.warning("stopping %d", i)
                    await send({"type": "lifespan.shutdown.complete"})
                    return

        server = Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning"))

        async def run() -> None:
            serving = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            server.should_exit = True
            await serving

        asyncio.run(run())
        assert slow.written == [f"stopping {i}" for i in range(20)]


def test_queued_log_records_are_waited_for_and_a_stuck_handler_is_not():
    """What `Server.shutdown` waits for: every record a queue listener holds is handled first; a
    handler that never returns costs the timeout, not the exit."""
    with _queued_logger("tests.serve_stop.queued") as (logger, slow):
        for i in range(20):
            logger.warning("line %d", i)
        assert asyncio.run(log_records_written(5.0)) is True
        assert slow.written == [f"line {i}" for i in range(20)]
        logger.warning("stuck")
        t0 = time.monotonic()
        assert asyncio.run(log_records_written(0.3)) is False
        assert time.monotonic() - t0 < 5
