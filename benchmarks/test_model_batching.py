"""Judgments per second with N queued, against the emulator at a realistic 150 ms per call.

    per_call_h1   one call per judgment: one shared AsyncGroq on an HTTP/1.1 pool of 200 connections
                  (the worker's client before per-model pools), 200 calls in flight, the rest waiting
                  for one of them to finish (queued in asyncio: N requests queued in httpx's own pool
                  cost it O(N) work on every change, and 1,000 of them finished none in 60 s)
    pooled_h2     the worker's ModelPool: one HTTP/2 connection for the model, `model_concurrency`
                  (64) streams in flight, the rest waiting for a slot
    batch_api     BatchClient.submit: one JSONL upload, batches.create, polling, one download

All three ask the same judgments (distinct contexts, the same chat-completion body:
`bridge.inference.completion`) of one emulator process served by hypercorn (HTTP/1.1 and h2c alike),
150 ms per call, batch lines 256 at a time. The client is this pytest process. Contenders run in
interleaved blocks (the order rotates per block) so that the machine's load falls on all of them.

Bounded in time: a run that has not finished after `CAP_S` seconds is stopped and its rate is the
judgments finished by then over `CAP_S` (marked `capped`). `GROQPOLICY_BENCH_SHORT=1`: N = 100
and 1,000 only, one block. Results: `extra_info` of each test, and one JSON line per run on stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import groq
import httpx
import pytest

from benchmarks.harness import spawn
from bridge.inference.batch import BatchClient
from bridge.inference.catalog import default_catalog
from bridge.inference.completion import completion_params
from bridge.inference.wire import InferRequest
from bridge.inference.worker.pool import ModelPool
from bridge.kernel.config import EngineSettings
from controlplane.infra.processes import free_port, wait_for_port

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
LATENCY_MS = 150
CAP_S = 60.0
PER_CALL_CONNECTIONS = 200
MODEL = "openai/gpt-oss-20b"
SIZES = (100, 1000) if SHORT else (100, 1000, 10_000)
BLOCKS = {100: 1 if SHORT else 3, 1000: 1 if SHORT else 2, 10_000: 1}
Contender = Callable[[str, list[InferRequest], list[int]], Awaitable[None]]


@pytest.fixture(scope="module")
def emulator_url():
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="bench-batching-")) / "emulator.log"
    proc = spawn([sys.executable, "-m", "bridge.emulator", "--port", str(port), "--latency-ms", str(LATENCY_MS),
                  "--server", "hypercorn"], log, dict(os.environ))
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _requests(n: int, tag: str) -> list[InferRequest]:
    return [InferRequest(question="Is this request within policy?", context={"run": tag, "i": i, "text": "a note"})
            for i in range(n)]


async def per_call_h1(url: str, reqs: list[InferRequest], done: list[int]) -> None:
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=PER_CALL_CONNECTIONS, max_keepalive_connections=50,
                                                 keepalive_expiry=60), timeout=httpx.Timeout(120.0, connect=5.0))
    client = groq.AsyncGroq(base_url=url, api_key="bench", max_retries=0, http_client=http)
    catalog = default_catalog()
    slots = asyncio.Semaphore(PER_CALL_CONNECTIONS)

    async def one(req: InferRequest) -> None:
        async with slots:
            await client.chat.completions.create(**completion_params(catalog, MODEL, "fast", req))
        done[0] += 1

    try:
        await asyncio.gather(*(one(r) for r in reqs))
    finally:
        await client.close()


async def pooled_h2(url: str, reqs: list[InferRequest], done: list[int]) -> None:
    catalog = default_catalog()
    base = groq.AsyncGroq(base_url=url, api_key="bench", max_retries=0)
    pool = ModelPool(base, catalog.models, EngineSettings(http2="prior-knowledge"))

    async def one(req: InferRequest) -> None:
        async with pool.slot(MODEL, 600):
            await pool.client(MODEL).chat.completions.create(**completion_params(catalog, MODEL, "fast", req))
        done[0] += 1

    try:
        await asyncio.gather(*(one(r) for r in reqs))
    finally:
        await pool.close()
        await base.close()


async def batch_api(url: str, reqs: list[InferRequest], done: list[int]) -> None:
    base = groq.AsyncGroq(base_url=url, api_key="bench", max_retries=0, timeout=120)

    def seen(p) -> None:
        done[0] = p.done + p.failed

    try:
        replies = await BatchClient(base, default_catalog(), emulated=True).submit(reqs, progress=seen)
        assert not any(r.degraded for r in replies)
        done[0] = len(replies)
    finally:
        await base.close()


CONTENDERS: dict[str, Contender] = {"per_call_h1": per_call_h1, "pooled_h2": pooled_h2, "batch_api": batch_api}


async def _timed(name: str, url: str, n: int, tag: str) -> dict:
    done = [0]
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(CONTENDERS[name](url, _requests(n, tag), done), CAP_S)
        capped = False
    except TimeoutError:
        capped = True
    elapsed = time.perf_counter() - t0
    return {"contender": name, "queued": n, "finished": done[0], "seconds": round(elapsed, 2), "capped": capped,
            "judgments_per_s": round(done[0] / elapsed, 1)}


@pytest.mark.parametrize("n", SIZES)
def test_judgments_per_second(benchmark, emulator_url, n):
    runs: list[dict] = []

    def blocks() -> None:
        names = list(CONTENDERS)
        for b in range(BLOCKS[n]):
            order = names[b % len(names):] + names[:b % len(names)]
            for name in order:
                run = asyncio.run(_timed(name, emulator_url, n, f"{n}-{b}-{name}"))
                print(json.dumps(run), flush=True)
                runs.append(run)

    benchmark.pedantic(blocks, rounds=1, iterations=1)
    for name in CONTENDERS:
        mine = sorted(r["judgments_per_s"] for r in runs if r["contender"] == name)
        benchmark.extra_info[name] = {"judgments_per_s_median": mine[len(mine) // 2],
                                      "capped": any(r["capped"] for r in runs if r["contender"] == name)}
    base = benchmark.extra_info["per_call_h1"]["judgments_per_s_median"]
    for name in ("pooled_h2", "batch_api"):
        benchmark.extra_info[name]["factor_vs_per_call"] = round(
            benchmark.extra_info[name]["judgments_per_s_median"] / base, 2) if base else None
