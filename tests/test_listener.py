"""Connections to the control plane's shared socket spread across its processes
(controlplane.infra.listener): real sockets, real processes accepting on one inherited socket."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.infra.listener import _GONE, DEFER_S, AcceptCounts, FairAcceptor, SharedListener
from tests.controlplane_helpers import connections_at_once

ROOT = Path(__file__).resolve().parent.parent


class _Tells(asyncio.Protocol):
    """Says which process took the connection, then holds it open until the client closes it."""

    def __init__(self, slot: int, open_now: set[_Tells]) -> None:
        self.slot, self.open_now = slot, open_now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.open_now.add(self)
        transport.write(b"%d\n" % self.slot)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_now.discard(self)


def child(fd: int, counts_fd: int, slot: int) -> None:
    """A process serving the shared socket through FairAcceptor (run by the test as `python -c`)."""

    async def serve() -> None:
        open_now: set[_Tells] = set()
        acceptor = FairAcceptor(socket.socket(fileno=fd), lambda: _Tells(slot, open_now), lambda: len(open_now),
                                AcceptCounts(counts_fd, slot))
        acceptor.start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin
        acceptor.close()

    asyncio.run(serve())


def _start(listener: SharedListener, slot: int) -> subprocess.Popen[str]:
    fd, counts_fd = listener.pass_fds
    proc = subprocess.Popen([sys.executable, "-c", f"from tests.test_listener import child; child({fd}, {counts_fd}, {slot})"],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=listener.pass_fds)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _who_took(port: int, n: int) -> list[int]:
    """`n` connections opened at once (all connected before any is read), and the slot that took each."""
    conns = connections_at_once(f"http://127.0.0.1:{port}", n)
    try:
        return [int(c.makefile().readline()) for c in conns]
    finally:
        for c in conns:
            c.close()


def _published(listener: SharedListener) -> list[int]:
    data = os.pread(listener.counts_fd, 4 * listener.processes, 0)
    return list(memoryview(data).cast("i"))


def _quiet(listener: SharedListener) -> None:
    """Until every process has seen its connections close (each republishes every REFRESH_S)."""
    deadline = time.monotonic() + 5
    while any(_published(listener)):
        assert time.monotonic() < deadline, _published(listener)
        time.sleep(0.02)


@pytest.mark.parametrize("n", [4, 6, 32])
def test_connections_opened_at_once_spread_evenly_over_the_processes(n):
    listener = SharedListener("127.0.0.1", 0, 2)
    procs = [_start(listener, slot) for slot in (0, 1)]
    try:
        for _ in range(5):
            taken = collections.Counter(_who_took(listener.port, n))
            assert taken == {0: n // 2, 1: n // 2}, taken
            _quiet(listener)
    finally:
        for p in procs:
            p.stdin.close()  # type: ignore[union-attr]
        for p in procs:
            p.wait(timeout=10)
        listener.close()


def test_a_process_that_holds_more_takes_a_connection_the_others_leave():
    """The process with fewer connections does not accept (stuck): the one with more takes the
    connection itself after DEFER_S, and its slot says it is gone once it stops."""
    listener = SharedListener("127.0.0.1", 0, 2)
    stuck = AcceptCounts(os.dup(listener.counts_fd), 1)
    assert stuck.fewest_elsewhere() == 0 and _published(listener) == [0, _GONE]  # not accepting yet: nobody waits for it
    stuck.publish(0)  # says it holds nothing, and never accepts
    listener.vacate(2)  # what the supervisor does before starting its replacement
    assert _published(listener) == [0, _GONE]
    stuck.publish(0)

    async def run() -> tuple[float, int]:
        open_now: set[_Tells] = set()
        counts = AcceptCounts(os.dup(listener.counts_fd), 0)
        acceptor = FairAcceptor(socket.socket(fileno=os.dup(listener.sock.fileno())), lambda: _Tells(0, open_now),
                                lambda: len(open_now) + 1, counts)  # as if it served a connection already
        acceptor.start()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        taken = await loop.run_in_executor(None, _who_took, listener.port, 1)
        waited = time.monotonic() - started
        acceptor.close()
        return waited, taken[0]

    try:
        waited, slot = asyncio.run(run())
        assert slot == 0
        assert waited >= DEFER_S  # it left the connection to the other first
        assert stuck.fewest_elsewhere() == _GONE  # the stopped acceptor's slot: nobody waits for it
    finally:
        stuck.close()
        listener.close()


def test_counts_refuse_a_descriptor_or_slot_that_is_not_theirs(tmp_path):
    fd = AcceptCounts.create(2)
    try:
        with pytest.raises(ValueError, match="slot 2 is not one of the 2 processes'"):
            AcceptCounts(fd, 2)
        empty = os.open(tmp_path / "empty", os.O_RDWR | os.O_CREAT, 0o600)
        with pytest.raises(ValueError, match="not an array of counts"):
            AcceptCounts(empty, 0)
        os.close(empty)
    finally:
        os.close(fd)
    out = subprocess.run([sys.executable, "-m", "controlplane.ops.cli", "serve", "--fd", "3", "--balance-fd", "987", "--slot", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--balance-fd 987 --slot 0" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_control_plane_seen_dead_is_left_out_of_the_balance_at_once(tmp_path):
    """The supervisor clears a dead process's slot when it sees the death, not only when it starts
    the replacement: here it gives up on the process at its first death, and the count it last
    published (0, which a peer holding connections would leave every new connection to for
    DEFER_S) reads 'gone' from then on."""
    from bridge.kernel.config import Settings, SupervisorSettings
    from controlplane.infra.processes import free_port, spawn
    from controlplane.infra.supervision import FAILED, RestartPolicy, Supervisor
    from controlplane.ops.system import System

    system = System(Settings(state_dir=tmp_path / "state", port=free_port()), SupervisorSettings(processes=2), tmp_path)
    planes = system.control_planes("http://127.0.0.1:9")
    listener = system.listener
    assert listener is not None and planes[1].on_exit is not None
    # the wiring of the real children, with a stand-in process (a `serve` takes seconds to start)
    second = dataclasses.replace(planes[1], launch=lambda: spawn("stand-in", ["sleep", "60"], tmp_path / "stand-in.log"),
                                 ready=lambda _: True)
    said: list[str] = []
    sup = Supervisor(tmp_path / "supervisor.json", RestartPolicy(budget=0), say=said.append)
    try:
        proc = sup.start(second)
        slot = AcceptCounts(os.dup(listener.counts_fd), 1)
        slot.publish(0)  # what the process published while it served, before it was killed
        assert _published(listener)[1] == 0
        proc.kill()
        deadline = time.monotonic() + 10
        while sup.runs[0].state != FAILED:
            assert time.monotonic() < deadline, said
            sup.poll()
            time.sleep(0.02)
        assert said[-1].startswith("GIVING UP on control plane 2")
        assert _published(listener)[1] == _GONE
        slot.close()
    finally:
        sup.stop_all()
        system.close()
