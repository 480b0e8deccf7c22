"""Shared fixtures: the real binaries, started on loopback with random ports and temp dirs, the
Groq emulator over real HTTP, and a control plane for the modules that take it as it comes.

The emulator and the control plane are imported by the fixtures that start them: the groq SDK and
the Litestar app take most of a second to import, which a run of unrelated tests should not pay.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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


def _emulator() -> Iterator[Any]:
    from tests.bridge_helpers import Emu

    e = Emu()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def emu():
    """A Groq emulator over real HTTP for one test (`tests.bridge_helpers.Emu`)."""
    yield from _emulator()


@pytest.fixture(scope="module")
def emu_module():
    """A Groq emulator shared by the tests of one module."""
    yield from _emulator()


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory, nats_server_module):
    """A control plane on the module's nats-server: (an httpx client that sends no token, its
    Services). A module that needs another setup defines its own `cp`."""
    from tests.controlplane_helpers import make_settings, running_control_plane

    settings = make_settings(tmp_path_factory.mktemp("cp") / "state", nats_url=nats_server_module.extra["url"])
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, timeout=30) as client:
            yield client, services
