"""Run an ASGI app (the emulator, the gateway) on a loopback socket: in a thread or in this loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _config(app: Any, **kw: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=kw.pop("log_level", "warning"), access_log=False, lifespan=kw.pop("lifespan", "on"),
                          timeout_graceful_shutdown=kw.pop("timeout_graceful_shutdown", 1), **kw)


class _GuestServer(uvicorn.Server):
    """uvicorn inside someone else's program: the program owns SIGINT/SIGTERM, not the server."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ThreadServer:
    """uvicorn in a daemon thread with its own event loop; `url` is ready when the constructor returns."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(_config(app, **kw))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"asgi-{self.port}")
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"ASGI server on {self.url} did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


class LoopServer:
    """uvicorn as a task in the running loop (for a program that owns the loop, such as a test)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = _GuestServer(_config(app, **kw))
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> LoopServer:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError(f"ASGI server on {self.url} did not start")
            await asyncio.sleep(0.005)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=5)
        self.sock.close()
