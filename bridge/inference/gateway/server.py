"""Start the gateway inside an existing asyncio program (the supervisor), on loopback by default."""

from __future__ import annotations

from bridge.inference.gateway.app import create_app
from bridge.inference.serving import LoopServer
from bridge.kernel.config import GatewaySettings


async def serve_gateway(nats_url: str | None = None, host: str | None = None, port: int | None = None, **kw) -> LoopServer:
    """uvicorn serving the gateway as a task in the running loop; `await server.stop()` to end it."""
    settings = GatewaySettings.from_env()
    host = host or settings.host
    port = settings.port if port is None else port
    return await LoopServer(create_app(nats_url, **kw), host=host, port=port).start()
