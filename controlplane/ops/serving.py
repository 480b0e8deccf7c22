"""uvicorn serving on the deployment's shared socket, accepting through `FairAcceptor`.

uvicorn's own listener takes every connection its process wakes to (`controlplane.infra.listener`
says why that starves the other processes), so this server runs uvicorn's start-up without a
listener of its own and hands each connection that `FairAcceptor` accepts to the same HTTP
protocol uvicorn would have made for it.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from controlplane.infra.listener import AcceptCounts, FairAcceptor


class BalancedServer(uvicorn.Server):
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
