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

from bridge.inference.worker.service import connect_groq, groq_endpoint, start_worker, stop_worker
from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import ConfigError, GroqPolicyError


async def _main(settings: GroqSettings) -> int:
    conn = await connect_groq(settings)
    try:  # NATS's first connect is bounded: a refused credential says so at once, a missing server in time
        worker, conn, nc = await start_worker(settings.nats_url, groq_conn=conn)
    except GroqPolicyError as exc:  # NatsUnreachable, NatsCredentialRefused, NatsTlsError, ConfigError
        await conn.close()
        print(f"error: {exc}", file=sys.stderr)
        print("hint: start nats-server (`make run` does) or set GROQPOLICY_NATS_URL / --nats-url, and the "
              "worker's NATS credential (GROQPOLICY_NATS_NKEY, _CREDS or _USER)", file=sys.stderr)
        return 1
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
        return asyncio.run(_main(settings))
    return uvloop.run(_main(settings))


if __name__ == "__main__":
    raise SystemExit(main())
