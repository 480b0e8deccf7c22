"""Run the real control plane (uvicorn, loopback, random port) inside the test process."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from controlplane.app import create_app
from controlplane.processes import free_port
from controlplane.services import Services
from controlplane.settings import Settings
from tests.conftest import REPO_ROOT


# Known tokens for tests (GROQPOLICY_TOKENS syntax); ADMIN holds every scope.
ADMIN_TOKEN = "test-admin-token-000000000000"
EVALUATE_TOKEN = "test-evaluate-token-00000000"
AGENT_TOKEN = "test-agent-token-000000000000"
TEST_TOKENS = f"admin={ADMIN_TOKEN}:admin+evaluate+agent,evaluate={EVALUATE_TOKEN}:evaluate,agent={AGENT_TOKEN}:agent"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(state_dir: Path, **overrides: object) -> Settings:
    base: dict = {
        "host": "127.0.0.1",
        "port": free_port(),
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
    thread = threading.Thread(target=server.run, name="controlplane", daemon=True)
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


def gzip_json(obj: object) -> bytes:
    return gzip.compress(json.dumps(obj).encode())
