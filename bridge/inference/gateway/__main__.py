"""`python -m bridge.inference.gateway [--host 127.0.0.1] [--port 8016]`: serve the gateway (NATS at $NATS_URL)."""

from __future__ import annotations

import argparse

import uvicorn

from bridge.inference.gateway.app import Gateway
from bridge.kernel.config import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    settings = GatewaySettings.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.inference.gateway", description=__doc__)
    ap.add_argument("--host", default=settings.host)
    ap.add_argument("--port", type=int, default=settings.port)
    args = ap.parse_args(argv)
    settings = GatewaySettings.from_env(host=args.host, port=args.port)
    uvicorn.run(Gateway(settings), host=settings.host, port=settings.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
