"""Run the real control plane (uvicorn, loopback, random port) inside the test process."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from bridge.kernel.config import Settings
from controlplane.app import create_app
from controlplane.services import Services
from tests.bridge_helpers import spawn_worker, wait_for_workers
from tests.conftest import REPO_ROOT

# Known tokens for tests (GROQPOLICY_TOKENS syntax); ADMIN holds every scope.
ADMIN_TOKEN = "test-admin-token-000000000000"
EVALUATE_TOKEN = "test-evaluate-token-00000000"
AGENT_TOKEN = "test-agent-token-000000000000"
TEST_TOKENS = f"admin={ADMIN_TOKEN}:admin+evaluate+agent,evaluate={EVALUATE_TOKEN}:evaluate,agent={AGENT_TOKEN}:agent"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Ports of settings made by `make_settings`, each held by a bound (not listening: a connection to it
# is refused, as to any port nothing serves) socket until `running_control_plane` serves on it, so no
# other process on a loaded machine can take the port in between, as it could one `free_port` released.
_RESERVED: dict[int, socket.socket] = {}


def _reserve_port(host: str = "127.0.0.1") -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    _RESERVED[port] = sock
    return port


def make_settings(state_dir: Path, **overrides: object) -> Settings:
    base: dict = {
        "host": "127.0.0.1",
        "port": _reserve_port(),
        "state_dir": state_dir,
        "rego_root": REPO_ROOT,
        "bundles_dir": REPO_ROOT / "bundles",
        "compile_on_start": False,
        "tokens": TEST_TOKENS,
    }
    base.update(overrides)
    return Settings(**base)


@contextlib.contextmanager
def running_control_plane(settings: Settings, services: Services | None = None) -> Iterator[Services]:
    services = services or Services.build(settings)
    app = create_app(settings, services)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False))
    reserved = _RESERVED.pop(settings.port, None)  # a second run on the same settings binds the port again
    thread = threading.Thread(target=server.run, name="controlplane", daemon=True,
                              kwargs={"sockets": [reserved]} if reserved is not None else {})
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("control plane did not start")
        time.sleep(0.02)
    try:
        yield services
    finally:
        server.should_exit = True
        thread.join(timeout=15)



@contextlib.contextmanager
def control_plane_with_worker(tmp: Path, nats_url: str, emulator_url: str) -> Iterator[tuple[Settings, Services, subprocess.Popen]]:
    """A control plane (bundles compiled at start) and one inference worker process answering from
    the emulator over NATS; the worker is killed at the end (a test may kill it earlier)."""
    worker = spawn_worker(nats_url, emulator_url, tmp / "worker.log")
    try:
        asyncio.run(wait_for_workers(nats_url, 1))
        settings = make_settings(tmp / "state", compile_on_start=True, nats_url=nats_url)
        with running_control_plane(settings) as services:
            yield settings, services, worker
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()

def gzip_json(obj: object) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


@contextlib.contextmanager
def counted_publishes(trail: Any) -> Iterator[list[int]]:
    """The sizes of the audit trail's publishes (records per publish) while inside, in order; the
    publisher's own method is back in place on the way out."""
    sizes: list[int] = []
    publisher = trail.writer.publisher
    publish = publisher.publish

    async def counting(chunk: list[Any], seq: int) -> Any:
        sizes.append(len(chunk))
        return await publish(chunk, seq)

    publisher.publish = counting
    try:
        yield sizes
    finally:
        publisher.publish = publish


def connections_at_once(url: str, n: int) -> list[socket.socket]:
    """`n` connections to the control plane at `url` (http://host:port), all opened before any is used."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=30) for _ in range(n)]


def get_together(url: str, path: str, n: int, headers: dict[str, str] | None = None) -> list[tuple[int, bytes]]:
    """(status, body) of `GET path` on each of `n` connections opened together and held until all are
    answered. With several control-plane processes on one port, each such connection goes to a
    process that holds the fewest (controlplane.infra.listener), so they reach every process, where
    connections opened one after another could all land on the same one (the one an OPA agent's long
    polls are not on)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()
    conns = connections_at_once(url, n)
    try:
        for c in conns:
            c.sendall(request)
        answers = []
        for c in conns:
            with c.makefile("rb") as f:
                head, _, body = f.read().partition(b"\r\n\r\n")
            answers.append((int(head.split(b" ", 2)[1]), body))
        return answers
    finally:
        for c in conns:
            c.close()


def health_of_every_process(url: str, processes: int, timeout: float = 60) -> dict[int, dict[str, Any]]:
    """`/health` of each of the `processes` control-plane processes serving `url`, by pid."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < processes:
        assert time.monotonic() < deadline, f"only these processes answered: {sorted(seen)}"
        for status, body in get_together(url, "/health", 3 * processes):
            assert status == 200, body
            health = json.loads(body)
            seen[health["process"]] = health
    return seen
