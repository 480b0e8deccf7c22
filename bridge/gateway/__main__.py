"""`python -m bridge.gateway [--host 127.0.0.1] [--port 8016]`: serve the gateway (NATS at $NATS_URL)."""

from __future__ import annotations

import argparse
import os

import uvicorn

from bridge.gateway.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default=os.environ.get("GROQPOLICY_GATEWAY_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("GROQPOLICY_GATEWAY_PORT", 8016)))
    args = ap.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=2)


if __name__ == "__main__":
    main()
