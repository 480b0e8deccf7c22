"""uvicorn as `serve` runs it: a server whose stop's last log lines are written (`Server`), and one
that also accepts through `FairAcceptor` on the deployment's shared socket (`BalancedServer`).

Log records reach their handlers through Litestar's queue listener, a thread. After a stop asked
for by a signal, uvicorn raises that signal again with the default action (so the exit status says
so), which ends the process at once, without the interpreter's exit hooks that would stop the
listener: whatever the stop itself logged last (records left in the audit spool, replay entries
dropped) was lost with it. `Server.shutdown` waits for the queued records to be written.

uvicorn's own listener takes every connection its process wakes to (`controlplane.infra.listener`
says why that starves the other processes), so `BalancedServer` runs uvicorn's start-up without a
listener of its own and hands each connection that `FairAcceptor` accepts to the same HTTP
protocol uvicorn would have made for it.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import queue
import socket

import uvicorn

from controlplane.infra.listener import AcceptCounts, FairAcceptor

LOG_WRITE_WAIT_S = 1.0  # at most this long for the queued records: a stuck handler does not hold up the exit


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)  # the application's stop (lifespan) included
        finally:
            await log_records_written(LOG_WRITE_WAIT_S)


async def log_records_written(timeout: float) -> bool:
    """Wait until every record queued for a queue listener has been handled (or `timeout`); whether they were."""
    queues = {id(h.queue): h.queue for h in _handlers() if isinstance(h, logging.handlers.QueueHandler)
              and isinstance(h.queue, queue.Queue) and getattr(getattr(h, "listener", None), "_thread", None) is not None}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(q.unfinished_tasks for q in queues.values()):  # task_done() follows each record's handling
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def _handlers() -> list[logging.Handler]:
    # a copy: another thread may make a logger meanwhile
    known = list(logging.Logger.manager.loggerDict.values())
    loggers = [logging.getLogger(), *(lg for lg in known if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers]


class BalancedServer(Server):
    def __init__(self, config: uvicorn.Config, sock: socket.socket, counts: AcceptCounts) -> None:
        super().__init__(config)
        self.sock, self.counts = sock, counts
        self.acceptor: FairAcceptor | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the application's start-up, and no listener of uvicorn's
        if not self.started:
            return
        config, loop = self.config, asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:  # what uvicorn's own listener makes for a connection
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop)

        self.acceptor = FairAcceptor(self.sock, protocol, lambda: len(self.server_state.connections), self.counts,
                                     ssl=config.ssl)
        self.acceptor.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        await super().shutdown(sockets=sockets)
