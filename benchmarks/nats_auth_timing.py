"""What NATS authentication costs: making the identities, connecting with one, and a request on an
authenticated connection, each against its anonymous counterpart on the real nats-server.

    .venv/bin/python benchmarks/nats_auth_timing.py [--runs N]

Prints medians and p90s (milliseconds for set-up and connects, microseconds for requests):

- `generate`: six fresh nkey seeds written 0600 plus the rendered config (a first start)
- `render`: the config from the seeds on disk (every later start)
- `connect anonymous`: nats-py connect + close to a server without authentication
- `connect nkey (nats-py)`: the same with an nkey seed file to the server with the generated config
- `connect nkey (connect())`: through `bridge.inference.connect.connect` (credential checks, first-connect race)
- `request anonymous` / `request nkey`: one request-reply to a bare responder on the same server kind;
  the authenticated responder answers through `allow_responses`, the requester reads its role's inbox
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from bridge.inference.connect import connect
from controlplane.infra.natsauth import NatsAuth
from controlplane.infra.processes import start_nats


def _summary(name: str, samples: list[float], unit: str) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return f"{name:<28} median {statistics.median(ordered):8.3f} {unit}   p90 {p90:8.3f} {unit}   (n={len(ordered)})"


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _atimed(fn: Callable[[], Awaitable[object]], runs: int, scale: float = 1000) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * scale)
    return out


async def _requests(url: str, runs: int, requester_kw: dict, responder_kw: dict) -> list[float]:
    responder = await nats.connect(url, **responder_kw)
    requester = await nats.connect(url, **requester_kw)

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    await responder.subscribe("groq.infer.fast", queue="groq-infer", cb=echo)
    await responder.flush()
    body = b"x" * 196
    for _ in range(200):  # warm up
        await requester.request("groq.infer.fast", body, timeout=2)
    samples = await _atimed(lambda: requester.request("groq.infer.fast", body, timeout=2), runs, scale=1e6)
    await requester.close()
    await responder.close()
    return samples


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="natsauth-bench-") as tmp:
        await _measure(Path(tmp), runs)


async def _measure(root: Path, runs: int) -> None:
    counter = iter(range(10**6))
    print(_summary("generate (6 seeds + config)", _timed(lambda: NatsAuth(root / f"g{next(counter)}").ensure(), runs), "ms"))
    auth = NatsAuth(root / "auth").ensure()
    print(_summary("render (seeds exist)", _timed(auth.ensure, runs), "ms"))
    plain = start_nats(root / "plain")
    authed = start_nats(root / "authed", extra_args=auth.server_args())
    try:
        anon_url, auth_url = plain.extra["url"], authed.extra["url"]

        async def anonymous() -> None:
            await (await nats.connect(anon_url)).close()

        async def nkey_raw() -> None:
            nc = await nats.connect(auth_url, nkeys_seed=str(auth.seed_file("gateway")), inbox_prefix="_INBOX.gateway")
            await nc.close()

        async def nkey_product() -> None:
            await (await connect(auth_url, role="gateway", settings=auth.credential("gateway"))).close()

        for name, fn in (("connect anonymous", anonymous), ("connect nkey (nats-py)", nkey_raw),
                         ("connect nkey (connect())", nkey_product)):
            await fn()
            print(_summary(name, await _atimed(fn, runs), "ms"))
        reqs = runs * 20
        print(_summary("request anonymous", await _requests(anon_url, reqs, {}, {}), "us"))
        print(_summary("request nkey", await _requests(
            auth_url, reqs, {"nkeys_seed": str(auth.seed_file("gateway")), "inbox_prefix": "_INBOX.gateway"},
            {"nkeys_seed": str(auth.seed_file("worker")), "inbox_prefix": "_INBOX.worker"}), "us"))
    finally:
        plain.stop()
        authed.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
