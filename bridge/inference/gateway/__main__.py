"""`python -m bridge.inference.gateway [--host 127.0.0.1] [--port 8016]`: serve the gateway (NATS at $NATS_URL)."""

from __future__ import annotations

import argparse

import uvicorn

from bridge.inference.gateway.app import create_app
from bridge.kernel.config import GatewaySettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    settings = GatewaySettings.from_env()
    ap.add_argument("--host", default=settings.host)
    ap.add_argument("--port", type=int, default=settings.port)
    args = ap.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
