"""The control plane's listening socket, shared by the deployment's processes, and connections
spread evenly across them.

The supervisor binds the socket once (`SharedListener`) and every control-plane process serves on
it (`serve --fd`), so a connection that arrives while a process restarts waits in the backlog. Left
to the event loop, the process that wakes first accepts every connection waiting there (libuv
accepts until the backlog is empty), so a few keep-alive clients that connect at once (a load
balancer's upstream pool, a load generator's workers) can all land on one process while another
idles: three of four connections on one process in four of six runs (benchmarks/README.md, "Every
core"). With more than one process, each accepts one connection at a time itself (`FairAcceptor`)
and publishes how many it holds in a small array the processes share (`AcceptCounts`: a memfd the
supervisor makes and hands to each): a process that holds more connections than another leaves
the next one to it, and takes it after `DEFER_S` when nobody has (the others busy, or dead), so a
connection never waits on this longer than that. The kernel offers no such choice: `SO_REUSEPORT`
hands connections out by a hash of their addresses, and libuv has no single-accept mode any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mmap
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from controlplane.infra.processes import listen_socket

log = logging.getLogger(__name__)

DEFER_S = 0.005  # how long a process with more connections than another leaves a new one to the others
RECHECK_S = 0.001  # meanwhile it looks again this often (the others' counts change as they accept)
REFRESH_S = 0.05  # how often a process republishes its count (connections close without telling us)
RETRY_S = 0.5  # after running out of file descriptors or memory: accept again this much later
_GONE = 2**31 - 1  # the count a stopped process leaves in its slot: nobody defers to it
_SLOT = 4  # bytes per process: one native int, written and read whole


class AcceptCounts:
    """The deployment's array of connections held per process (one slot each), over a shared file."""

    def __init__(self, fd: int, slot: int) -> None:
        size = os.fstat(fd).st_size
        if size < _SLOT or size % _SLOT:
            raise ValueError(f"connection counts: a shared file of {size} bytes is not an array of counts")
        self._map = mmap.mmap(fd, size)  # MAP_SHARED: every process sees every write
        self._counts = memoryview(self._map).cast("i")
        if not 0 <= slot < len(self._counts):
            self._counts.release()
            self._map.close()
            raise ValueError(f"connection counts: slot {slot} is not one of the {size // _SLOT} processes'")
        self.slot = slot
        # not accepting until its acceptor starts (a process's start-up takes seconds): nobody leaves
        # a connection to it meanwhile, whatever count a predecessor in this slot left
        self.publish(_GONE)

    @staticmethod
    def create(processes: int) -> int:
        """A new shared array for `processes` processes, as a file descriptor they can inherit (the
        file has no name: it goes when the last descriptor does)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("groqpolicy-connections")
        else:  # not Linux: an unlinked temporary file, readable by its owner only
            with tempfile.TemporaryFile() as f:
                fd = os.dup(f.fileno())
        os.ftruncate(fd, _SLOT * processes)
        os.set_inheritable(fd, True)
        return fd

    def publish(self, held: int) -> None:
        self._counts[self.slot] = min(held, _GONE)

    def fewest_elsewhere(self) -> int:
        """The fewest connections any other process holds (`_GONE`: there is no other)."""
        counts, mine = self._counts, self.slot
        return min((counts[k] for k in range(len(counts)) if k != mine), default=_GONE)

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # closed already
            self.publish(_GONE)
        self._counts.release()
        self._map.close()


class SharedListener:
    """The listening socket the supervisor keeps across its control planes' restarts, and, with
    more than one process, the array they balance connections by. Each process is started with
    `serve_args(number)` and inherits `pass_fds`."""

    def __init__(self, host: str, port: int, processes: int) -> None:
        self.sock = listen_socket(host, port)
        self.processes = processes
        self.counts_fd = AcceptCounts.create(processes) if processes > 1 else -1

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.sock.fileno(),) if self.counts_fd < 0 else (self.sock.fileno(), self.counts_fd)

    def serve_args(self, number: int) -> list[str]:
        """`serve`'s arguments for process `number` (1, 2, ...) of the deployment."""
        args = ["--fd", str(self.sock.fileno())]
        if self.counts_fd >= 0:
            args += ["--balance-fd", str(self.counts_fd), "--slot", str(number - 1)]
        return args

    def vacate(self, number: int) -> None:
        """Leave process `number` out of the balance until its next acceptor runs: called when the
        supervisor sees it dead and before it is (re)started, so that what a killed process last
        published keeps nobody waiting, through a restart delay or after the supervisor gives up."""
        if self.counts_fd >= 0:
            os.pwrite(self.counts_fd, _GONE.to_bytes(_SLOT, sys.byteorder, signed=True), _SLOT * (number - 1))

    def close(self) -> None:
        self.sock.close()
        if self.counts_fd >= 0:
            os.close(self.counts_fd)
            self.counts_fd = -1


class FairAcceptor:
    """Accepts connections on a socket shared with other processes, one at a time, leaving each to
    a process that holds fewer (`AcceptCounts`) for up to `DEFER_S`; each accepted connection gets
    a protocol from `factory`. `held()`: the connections this process serves now."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], held: Callable[[], int],
                 counts: AcceptCounts, *, ssl: Any = None) -> None:
        self.sock, self.factory, self.held, self.counts, self.ssl = sock, factory, held, counts, ssl
        self._pending = 0  # accepted, and not among `held()` yet (its protocol's connection_made to come)
        self._timer: asyncio.TimerHandle | None = None
        self._until = 0.0  # while deferring: when this process takes the connection itself
        self._reading = self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._resume()
        self._refresh()  # publishes this process's count: from now on others may leave connections to it

    def close(self) -> None:
        """Accept nothing more (what is accepted is served on); the slot says this process is gone."""
        self._closed = True
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.counts.close()
        self.sock.close()  # this process's descriptor: the supervisor's stays open

    def _holding(self) -> int:
        return self.held() + self._pending

    def _refresh(self) -> None:
        if self._closed:
            return
        self.counts.publish(self._holding())
        assert self._loop is not None
        self._loop.call_later(REFRESH_S, self._refresh)

    def _resume(self) -> None:
        if not self._reading and not self._closed:
            assert self._loop is not None
            self._loop.add_reader(self.sock.fileno(), self._readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            assert self._loop is not None
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _fair(self) -> bool:
        """Whether the next connection is ours: no other process holds fewer."""
        holding = self._holding()
        self.counts.publish(holding)
        return holding <= self.counts.fewest_elsewhere()

    def _readable(self) -> None:
        if self._fair():
            self._accept()
            return
        # another process holds fewer: it takes this one, or we do after DEFER_S; not watching the
        # socket meanwhile (it stays readable until someone accepts: the loop would spin on it)
        assert self._loop is not None
        self._pause()
        self._until = self._loop.time() + DEFER_S
        self._timer = self._loop.call_later(RECHECK_S, self._recheck)

    def _recheck(self) -> None:
        self._timer = None
        if self._closed:
            return
        assert self._loop is not None
        if self._fair() or self._loop.time() >= self._until:
            self._take()
        else:
            self._timer = self._loop.call_later(RECHECK_S, self._recheck)

    def _take(self) -> None:
        self._timer = None
        if not self._closed:
            self._resume()
            self._accept()

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another process took it, or the client gave up first
        except OSError as exc:  # out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or worse
            # the connection waits in the backlog (or another process takes it); trying again at once would spin
            log.error("control plane: cannot accept a connection (%s); trying again in %.1f s", exc.strerror or exc, RETRY_S)
            self._pause()
            assert self._loop is not None
            self._timer = self._loop.call_later(RETRY_S, self._take)
            return
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the event loop's own server does
        self._pending += 1
        self.counts.publish(self._holding())
        assert self._loop is not None
        made = [False]
        task = self._loop.create_task(self._loop.connect_accepted_socket(functools.partial(self._protocol, made), conn,
                                                                         ssl=self.ssl))
        task.add_done_callback(functools.partial(self._connected, conn, made))

    def _protocol(self, made: list[bool]) -> asyncio.Protocol:
        """`factory()`'s protocol, which leaves the pending count when it counts itself among
        `held()` (in its connection_made), so that no moment counts a connection twice or not at all."""
        protocol = self.factory()
        connection_made = protocol.connection_made

        def counted(transport: asyncio.BaseTransport) -> None:
            made[0] = True
            self._pending -= 1
            connection_made(transport)

        protocol.connection_made = counted  # type: ignore[method-assign]
        return protocol

    def _connected(self, conn: socket.socket, made: list[bool], task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            if not made[0]:
                self._pending -= 1
            if not task.cancelled():
                log.warning("control plane: an accepted connection could not be served: %r", task.exception())
            conn.close()
