"""Shared fixtures: the real binaries, started on loopback with random ports and temp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.infra.processes import ManagedProcess, start_nats
from controlplane.infra.toolchain import nats_server_binary, opa_binary

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def opa_bin() -> Path:
    return opa_binary()


@pytest.fixture(scope="session")
def nats_bin() -> Path:
    return nats_server_binary()


@pytest.fixture
def nats_server(tmp_path: Path, nats_bin: Path):
    """A fresh nats-server with JetStream for one test."""
    mp: ManagedProcess = start_nats(tmp_path / "nats")
    try:
        yield mp
    finally:
        mp.stop()


@pytest.fixture(scope="module")
def nats_server_module(tmp_path_factory: pytest.TempPathFactory, nats_bin: Path):
    """A nats-server shared by the tests of one module."""
    mp: ManagedProcess = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield mp
    finally:
        mp.stop()


@pytest.fixture(autouse=True, scope="session")
def _quiet_http_client_logs():
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
