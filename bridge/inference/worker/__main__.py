"""`python -m bridge.inference.worker`: serve `groq.infer.<tier>` on $NATS_URL until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import nats

from bridge.inference.worker.service import start_worker, stop_worker
from bridge.kernel.config import GroqSettings


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


async def _main(nats_url: str, connect_attempts: int) -> int:
    if (why := await _reachable(nats_url, connect_attempts)) is not None:
        print(f"error: cannot reach NATS at {nats_url} ({why})", file=sys.stderr)
        print("hint: start nats-server (`make run` does) or set NATS_URL / --nats-url", file=sys.stderr)
        return 1
    worker, conn, nc = await start_worker(nats_url)
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
    parser.add_argument("--nats-url", default=GroqSettings.from_env().nats_url)
    parser.add_argument("--connect-attempts", type=int, default=10, help="initial connection attempts (0.5 s apart)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: a faster event loop where it is installed
    except ImportError:
        return asyncio.run(_main(args.nats_url, args.connect_attempts))
    return uvloop.run(_main(args.nats_url, args.connect_attempts))


if __name__ == "__main__":
    raise SystemExit(main())
