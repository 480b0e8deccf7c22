"""`python -m bridge.inference.worker [--nats-url URL]`: serve `groq.infer.<tier>` until SIGTERM/SIGINT.

Model calls go to GroqCloud when `GROQ_API_KEY` is set, else to the emulator at
`GROQPOLICY_EMULATOR_URL`; with neither the worker exits at once, saying so in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import nats

from bridge.inference.worker.service import connect_groq, groq_endpoint, start_worker, stop_worker
from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import ConfigError


async def _reachable(url: str, attempts: int) -> str | None:
    """None when NATS answers; otherwise why not, in one line (no reconnect tracebacks)."""

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        nc = await nats.connect(url, max_reconnect_attempts=attempts, reconnect_time_wait=0.5, connect_timeout=2,
                                error_cb=quiet, allow_reconnect=True)
    except Exception as exc:  # noqa: BLE001 - reported to the user as one line
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    await nc.close()
    return None


async def _main(settings: GroqSettings, connect_attempts: int) -> int:
    if (why := await _reachable(settings.nats_url, connect_attempts)) is not None:
        print(f"error: cannot reach NATS at {settings.nats_url} ({why})", file=sys.stderr)
        print("hint: start nats-server (`make run` does) or set NATS_URL / --nats-url", file=sys.stderr)
        return 1
    worker, conn, nc = await start_worker(settings.nats_url, groq_conn=await connect_groq(settings))
    logging.getLogger("groqpolicy.worker").info("worker up: %s (emulated=%s)", conn.base_url, conn.emulated)
    print(f"groqpolicy worker ready emulated={str(conn.emulated).lower()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_worker(worker, conn, nc)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.inference.worker", description="Serve groq.infer.<tier> over NATS.")
    parser.add_argument("--nats-url", default=None, help="default: $GROQPOLICY_NATS_URL, $NATS_URL or nats://127.0.0.1:4222")
    parser.add_argument("--connect-attempts", type=int, default=10, help="initial connection attempts (0.5 s apart)")
    args = parser.parse_args(argv)
    try:
        settings = GroqSettings.from_env(**({"nats_url": args.nats_url} if args.nats_url else {}))
        groq_endpoint(settings)  # before anything else: a worker with no model endpoint is a setup mistake
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional (not on Windows): a faster event loop where it is installed
    except ImportError:
        return asyncio.run(_main(settings, args.connect_attempts))
    return uvloop.run(_main(settings, args.connect_attempts))


if __name__ == "__main__":
    raise SystemExit(main())
