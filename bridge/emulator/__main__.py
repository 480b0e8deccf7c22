"""`python -m bridge.emulator [--host 127.0.0.1] [--port 8017] [--latency-ms N] [--api-key K] [--config FILE]`:
serve the Groq emulator. `--config` is an `EmulatorConfig` as JSON (per-model latency and fault rates)."""

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
    args = ap.parse_args()
    config = msgspec.json.decode(args.config.read_bytes(), type=EmulatorConfig) if args.config else EmulatorConfig()
    if args.latency_ms:
        config.default = ModelBehaviour(latency_ms=args.latency_ms)
    if args.api_key:
        config.api_key = args.api_key
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
