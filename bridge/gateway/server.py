"""Start the gateway inside an existing asyncio program (the supervisor), on loopback by default."""

from __future__ import annotations

import os

from bridge.emulator.server import LoopServer
from bridge.gateway.app import create_app


async def serve_gateway(nats_url: str | None = None, host: str | None = None, port: int | None = None, **kw) -> LoopServer:
    """uvicorn serving the gateway as a task in the running loop; `await server.stop()` to end it."""
    host = host or os.environ.get("GROQPOLICY_GATEWAY_HOST", "127.0.0.1")
    port = int(port if port is not None else os.environ.get("GROQPOLICY_GATEWAY_PORT", 8016))
    return await LoopServer(create_app(nats_url, **kw), host=host, port=port).start()
