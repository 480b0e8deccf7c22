"""`python -m bridge.emulator [--host 127.0.0.1] [--port 8017]`: serve the Groq emulator."""

from __future__ import annotations

import argparse

import uvicorn

from bridge.emulator.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8017)
    args = ap.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
