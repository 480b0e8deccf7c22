"""Is the control plane's event loop free while runaway policies run? `/health`, a bundle download
and a bundle long poll, measured with 8 runaway evaluations always in flight (each runs into its
1 s deadline, and is replaced by another as soon as it is answered) and without them (the
baseline), side by side in interleaved blocks so that the machine's drift reaches both alike.

Processes: nats-server and the control plane (`python -m controlplane.ops.cli serve`, uvicorn:
uvloop + httptools), the client in this process. `/health` and the bundle download are sent on a
fixed schedule and each latency is measured from its scheduled time (a stall shows up instead of
lowering the load). A long poll (`If-None-Match` + `Prefer: wait=1`, nothing changes) is measured
by how late its 304 comes after the second it asked to wait. `GROQPOLICY_BENCH_SHORT=1` cuts the
run to a few seconds. See benchmarks/README.md (the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import spawn
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 6  # per contender, alternating: baseline, runaways, baseline, ...
BLOCK_S = 4.0 if SHORT else 10.0
RUNAWAYS = 8
HEALTH_RATE = 50.0  # requests per second
BUNDLE_RATE = 10.0
LONG_POLLS = 4  # long polls in flight at a time
WAIT_S = 1
TOKEN = "bench-admin-token-0000000000000"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUNAWAY = """package runaway

import rego.v1

spin if {
\tsome i in numbers.range(1, input.n)
\tsome j in numbers.range(1, input.n)
\ti == 0 - j
}

decision := {"decision": "allow", "confidence": 1, "reasons": ["small n"]} if not spin
"""


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    ns = start_nats(tmp / "nats")
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    cp_env = dict(env, GROQPOLICY_NATS_URL=ns.extra["url"], GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate+agent",
                  GROQPOLICY_RATE_LIMIT="off")
    proc = spawn([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(port), "--state-dir",
                  str(tmp / "state"), "--log-level", "warning"], tmp / "cp.log", cp_env)
    loop = asyncio.new_event_loop()
    try:
        wait_for_port(port, timeout=90, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as admin:
            r = admin.post("/api/v1/policies", json={"name": "runaway", "policy_type": "risk_management", "opa_policy": RUNAWAY,
                                                     "performance_tier": "nano", "constitutional_hash": CONSTITUTIONAL_HASH})
            assert r.status_code == 201, r.text
            rule_id = r.json()["rule_id"]
            probe = admin.post("/api/v1/opa/evaluate", json={"policy_id": rule_id, "input_data": {"n": 3}})
            assert probe.status_code == 200 and probe.json()["result"]["decision"] == "allow", probe.text
            etag = admin.get("/bundles/groqpolicy").headers["etag"]
        yield {"loop": loop, "tmp": tmp, "url": f"http://127.0.0.1:{port}", "rule_id": rule_id, "etag": etag}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        ns.stop()
        loop.close()


async def _scheduled(client: httpx.AsyncClient, path: str, rate: float, until: float, out: list[float]) -> None:
    """GET `path` at `rate` per second until `until`; each latency from the request's scheduled time."""
    start = time.perf_counter()
    i = 0
    while (scheduled := start + i / rate) < until:
        if (now := time.perf_counter()) < scheduled:
            await asyncio.sleep(scheduled - now)
        r = await client.get(path)
        assert r.status_code == 200, r.text[:300]
        out.append(time.perf_counter() - scheduled)
        i += 1


async def _long_polls(client: httpx.AsyncClient, etag: str, until: float, out: list[float]) -> None:
    """Long polls on an unchanged bundle, one after the other: how late each 304 comes."""
    headers = {"If-None-Match": etag, "Prefer": f"modes=snapshot,delta;wait={WAIT_S}"}
    while time.perf_counter() + WAIT_S < until:
        t0 = time.perf_counter()
        r = await client.get("/bundles/groqpolicy", headers=headers)
        assert r.status_code == 304, r.status_code
        out.append(max(0.0, time.perf_counter() - t0 - WAIT_S))


async def _runaways(client: httpx.AsyncClient, rule_id: str, stop: asyncio.Event, statuses: list[int]) -> None:
    body = {"policy_id": rule_id, "input_data": {"n": 100_000}}
    while not stop.is_set():
        r = await client.post("/api/v1/opa/evaluate", json=body)
        statuses.append(r.status_code)


def _stats(samples: list[float]) -> dict:
    data = sorted(samples)
    if not data:
        return {"n": 0}
    return {"p50_ms": round(data[len(data) // 2] * 1e3, 2), "p99_ms": round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1e3, 2),
            "max_ms": round(data[-1] * 1e3, 2), "n": len(data)}


async def _block(url: str, rule_id: str, etag: str, runaways: bool, into: dict[str, list]) -> None:
    limits = httpx.Limits(max_connections=RUNAWAYS + LONG_POLLS + 4)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) as client:
        stop = asyncio.Event()
        load = [asyncio.create_task(_runaways(client, rule_id, stop, into["runaway_status"])) for _ in range(RUNAWAYS if runaways else 0)]
        if runaways:
            await asyncio.sleep(0.3)  # all of them on the server before measuring
        until = time.perf_counter() + BLOCK_S
        await asyncio.gather(_scheduled(client, "/health", HEALTH_RATE, until, into["health"]),
                             _scheduled(client, "/bundles/groqpolicy", BUNDLE_RATE, until, into["bundle"]),
                             *(_long_polls(client, etag, until, into["long_poll_late"]) for _ in range(LONG_POLLS)))
        stop.set()
        await asyncio.gather(*load)


def test_loop_responsiveness_with_runaways(benchmark, stack):
    samples = {mode: {"health": [], "bundle": [], "long_poll_late": [], "runaway_status": []} for mode in ("baseline", "runaways")}

    async def run() -> None:
        for _ in range(BLOCKS):
            for mode in ("baseline", "runaways"):
                await _block(stack["url"], stack["rule_id"], stack["etag"], mode == "runaways", samples[mode])

    benchmark.pedantic(lambda: stack["loop"].run_until_complete(run()), rounds=1, iterations=1)
    statuses = samples["runaways"]["runaway_status"]
    assert statuses and set(statuses) == {504}, sorted(set(statuses))  # every runaway ran into its deadline
    result = {mode: {name: _stats(v) for name, v in s.items() if name != "runaway_status"} for mode, s in samples.items()}
    result["runaways"]["runaway_answers"] = {"n": len(statuses), "per_s": round(len(statuses) / (BLOCKS * BLOCK_S), 1)}
    benchmark.extra_info.update(result)
    (stack["tmp"] / "loop.json").write_text(json.dumps(result))
    print(f"\n{json.dumps(result, indent=1)}")
