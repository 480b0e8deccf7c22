"""`python -m bridge.worker`: serve `groq.infer.<tier>` on $NATS_URL until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from bridge.worker.service import start_worker, stop_worker


async def _main() -> None:
    worker, conn, nc = await start_worker()
    logging.getLogger("groqpolicy.worker").info("worker up: %s (emulated=%s)", conn.base_url, conn.emulated)
    print(f"groqpolicy worker ready emulated={str(conn.emulated).lower()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_worker(worker, conn, nc)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # optional: a faster event loop where it is installed
    except ImportError:
        asyncio.run(_main())
    else:
        uvloop.run(_main())


if __name__ == "__main__":
    main()
