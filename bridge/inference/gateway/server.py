"""Start the gateway inside an existing asyncio program, on loopback by default."""

from __future__ import annotations

from typing import Any

from bridge.inference.gateway.app import Gateway
from bridge.inference.serving import LoopServer
from bridge.kernel.config import GatewaySettings


async def serve_gateway(nats_url: str | None = None, **overrides: Any) -> LoopServer:
    """uvicorn serving the gateway as a task in the running loop, on `GatewaySettings`' host and port
    (overrides win: `port=0` for any free one); `await server.stop()` to end it."""
    if nats_url:
        overrides["nats_url"] = nats_url
    settings = GatewaySettings.from_env(**overrides)
    return await LoopServer(Gateway(settings), host=settings.host, port=settings.port).start()
