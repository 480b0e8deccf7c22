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

`test_evaluation_jobs`: the same comparison one floor up, as `groqpolicy evaluate --file` runs it: N
contexts (each its own text, so one judgment each) evaluated by a control plane process as one
evaluation job (`POST /api/v1/evaluate/jobs`) against a policy that asks the model (`judge`):

    job_online    via=online: the live pipeline, 100 contexts a call, each judgment one call through
                  NATS to an inference worker process (HTTP/1.1 to the emulator), now
    job_batch     via=batch: a pass that notes the judgments, one Batch API job, a pass that finds them

timed from submit to `completed` (a job still running after `CAP_S` is cancelled and rated on the
contexts its pass had decided). `GROQPOLICY_BENCH_SHORT=1`: N = 100 only.
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
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, wait_for_port
from tests.test_impact import JUDGE

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
LATENCY_MS = 150
CAP_S = 60.0
PER_CALL_CONNECTIONS = 200
MODEL = "openai/gpt-oss-20b"
SIZES = (100, 1000) if SHORT else (100, 1000, 10_000)
BLOCKS = {100: 1 if SHORT else 3, 1000: 1 if SHORT else 2, 10_000: 1}
JOB_SIZES = (100,) if SHORT else (100, 1000, 10_000)
JOB_BLOCKS = {100: 1 if SHORT else 3, 1000: 2, 10_000: 1}
TOKEN = "bench-jobs-token-00000000000000"
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


# ---- evaluation jobs: online against the Batch API, as `evaluate --file` runs them -------------------
@pytest.fixture(scope="module")
def job_stack(emulator_url):
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    ns = start_nats(tmp / "nats")
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent), GROQPOLICY_EMULATOR_URL=emulator_url)
    procs = []
    try:
        procs.append(spawn([sys.executable, "-m", "bridge.inference.worker"], tmp / "worker.log",
                           dict(env, NATS_URL=ns.extra["url"])))
        port = free_port()
        procs.append(spawn([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(port), "--state-dir",
                            str(tmp / "state"), "--log-level", "warning"], tmp / "cp.log",
                           dict(env, GROQPOLICY_NATS_URL=ns.extra["url"], GROQPOLICY_RATE_LIMIT="off",
                                GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate", GROQPOLICY_BATCH_POLL_S="0.05")))
        wait_for_port(port, timeout=90, proc=procs[-1])
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=600)
        r = client.post("/api/v1/policies", json={"name": "judge", "policy_type": "ethical_constraints",
                                                  "opa_policy": JUDGE, "performance_tier": "fast",
                                                  "constitutional_hash": CONSTITUTIONAL_HASH})
        assert r.status_code == 201, r.text
        yield client
        client.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        ns.stop()


def _job(client: httpx.Client, via: str, n: int, tag: str) -> dict:
    contexts = [{"principal": {"id": f"svc-{i}"}, "text": f"note {tag}-{i}: a friendly reminder",
                 "oversight": {"escalation": "oncall@example.com"}} for i in range(n)]
    t0 = time.perf_counter()
    r = client.post("/api/v1/evaluate/jobs", json={"contexts": contexts, "policy_types": ["ethical_constraints"],
                                                   "performance_tier": "fast", "via": via})
    assert r.status_code == 202, r.text[:300]
    job_id, capped = r.json()["id"], False
    while (job := client.get(f"/api/v1/evaluate/jobs/{job_id}").json())["state"] in ("queued", "running"):
        if time.perf_counter() - t0 > CAP_S:
            job, capped = client.post(f"/api/v1/evaluate/jobs/{job_id}/cancel").json(), True
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    assert capped or job["state"] == "completed", job
    finished = n if not capped else (job["done"] if job["passes"] > 1 or via == "online" else 0)
    return {"contender": f"job_{via}", "contexts": n, "finished": finished, "seconds": round(elapsed, 2),
            "capped": capped, "judgments_per_s": round(finished / elapsed, 1), "passes": job["passes"],
            "batch_lines": job["judgments"]["asked"], "failed": job["judgments"]["failed"],
            "cost_usd": job["judgments"]["cost_usd"], "load": os.getloadavg()[0]}


@pytest.mark.parametrize("n", JOB_SIZES)
def test_evaluation_jobs(benchmark, job_stack, n):
    runs: list[dict] = []

    def blocks() -> None:
        for b in range(JOB_BLOCKS[n]):
            for via in (("online", "batch") if b % 2 == 0 else ("batch", "online")):
                run = _job(job_stack, via, n, f"{n}-{b}-{via}")
                print(json.dumps(run), flush=True)
                runs.append(run)

    benchmark.pedantic(blocks, rounds=1, iterations=1)
    for name in ("job_online", "job_batch"):
        mine = sorted(r["judgments_per_s"] for r in runs if r["contender"] == name)
        benchmark.extra_info[name] = {"judgments_per_s_median": mine[len(mine) // 2], "runs": mine,
                                      "capped": any(r["capped"] for r in runs if r["contender"] == name)}
    base = benchmark.extra_info["job_online"]["judgments_per_s_median"]
    benchmark.extra_info["factor_batch_vs_online"] = round(
        benchmark.extra_info["job_batch"]["judgments_per_s_median"] / base, 2) if base else None
