"""`python -m bridge.emulator [--host 127.0.0.1] [--port 8017] [--latency-ms N] [--api-key K] [--config FILE]
[--server uvicorn|hypercorn]`: serve the Groq emulator. `--config` is an `EmulatorConfig` as JSON (per-model
latency and fault rates). `--server hypercorn` (a dev dependency) also speaks HTTP/2 over cleartext (h2c
with prior knowledge), which uvicorn does not: the batching benchmark measures HTTP/2 against it."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import uvicorn

from bridge.emulator.app import create_app
from bridge.emulator.behaviour import EmulatorConfig, ModelBehaviour


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8017)
    ap.add_argument("--latency-ms", type=float, default=0.0, help="default latency of every model")
    ap.add_argument("--api-key", default=None, help="require this bearer token")
    ap.add_argument("--config", type=Path, default=None, help="EmulatorConfig JSON file")
    ap.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    args = ap.parse_args()
    config = msgspec.json.decode(args.config.read_bytes(), type=EmulatorConfig) if args.config else EmulatorConfig()
    if args.latency_ms:
        config.default = ModelBehaviour(latency_ms=args.latency_ms)
    if args.api_key:
        config.api_key = args.api_key
    if args.server == "hypercorn":
        _hypercorn(create_app(config), args.host, args.port)
        return
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)


def _hypercorn(app: object, host: str, port: int) -> None:
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.h2_max_concurrent_streams = 1000  # a client's own bound decides, not the server's default of 100
    config.keep_alive_timeout = 60
    # hypercorn ends a connection after 1,000 requests by default (GOAWAY); the worker retries the
    # streams that were cut off, but a benchmark of one connection per model should not measure that
    config.keep_alive_max_requests = 10**9
    config.backlog = 1024  # a burst of new HTTP/1.1 connections is not refused at the listen queue
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
