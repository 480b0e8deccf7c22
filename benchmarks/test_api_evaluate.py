"""`/api/v1/evaluate` latency at a fixed offered load, next to (a) a trivial Litestar handler served
the same way (the framework floor) and (b) the OPA agent's REST API on the same policy; plus batch
throughput. Every server is its own process: nats-server, emulator, inference worker, gateway, the
control plane (`python -m controlplane.ops.cli serve`), the trivial app, and `opa run --server`.

Offered load: requests are sent on a fixed schedule (`RATE` per second, one keep-alive connection
per contender); a request that is late because the previous one was slow is measured from its
scheduled time, so a stall shows up in the p99 instead of silently lowering the load (no
coordinated omission). The contenders take turns in blocks (`BLOCKS` each), so that the machine's
drift during the run reaches all of them alike: measured one after the other in one long window
each, the floor's own p50 moved by up to 20% between runs and the ratio with it.
`GROQPOLICY_BENCH_SHORT=1` cuts the run to a few seconds. See benchmarks/README.md (issue 5).
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
from typing import Any

import httpx
import msgspec
import pytest

from benchmarks.harness import HTTPClient, spawn
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, start_opa_agent, wait_for_port
from tests.policy_examples import load_policy_examples

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
REQUESTS = 300 if SHORT else 3000
RATE = 200.0  # offered load, requests per second
WARMUP = 50 if SHORT else 300
BLOCKS = 2 if SHORT else 10  # latency blocks per contender, alternating between contenders
BLOCK_WARMUP = 20  # unrecorded requests at the start of each block
BATCH_ROUNDS = 5 if SHORT else 200
TOKEN = "bench-admin-token-0000000000000"
H = CONSTITUTIONAL_HASH


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    ns = start_nats(tmp / "nats")
    url = ns.extra["url"]
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    procs: list[subprocess.Popen] = []
    agent = None
    loop = asyncio.new_event_loop()
    try:
        emu_port, gw_port, cp_port, floor_port, agent_port = (free_port() for _ in range(5))
        procs.append(spawn([sys.executable, "-m", "bridge.emulator", "--port", str(emu_port)], tmp / "emu.log", env))
        wait_for_port(emu_port, proc=procs[-1])
        procs.append(spawn([sys.executable, "-m", "bridge.inference.worker"], tmp / "worker.log",
                            dict(env, NATS_URL=url, GROQPOLICY_EMULATOR_URL=f"http://127.0.0.1:{emu_port}")))
        (tmp / "bridge-token").write_text("bench-bridge-token-000000000")
        env["GROQPOLICY_BRIDGE_TOKEN_FILE"] = str(tmp / "bridge-token")  # the gateway and the control plane share it
        procs.append(spawn([sys.executable, "-m", "bridge.inference.gateway", "--port", str(gw_port)], tmp / "gw.log", dict(env, NATS_URL=url)))
        wait_for_port(gw_port, proc=procs[-1])
        cp_env = dict(env, GROQPOLICY_NATS_URL=url, GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate+agent",
                      GROQPOLICY_RATE_LIMIT="off", GROQPOLICY_BRIDGE_URL=f"http://127.0.0.1:{gw_port}",
                      GROQPOLICY_OPA_URL=f"http://127.0.0.1:{agent_port}")
        procs.append(spawn([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(cp_port), "--state-dir",
                             str(tmp / "state"), "--log-level", "warning"], tmp / "cp.log", cp_env))
        wait_for_port(cp_port, timeout=90, proc=procs[-1])
        procs.append(spawn([sys.executable, "-m", "benchmarks.api.trivial_app", str(floor_port)], tmp / "floor.log", env))
        wait_for_port(floor_port, proc=procs[-1])

        admin = httpx.Client(base_url=f"http://127.0.0.1:{cp_port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        ex = load_policy_examples()
        ids = {}
        for ptype in ("risk_management", "ethical_constraints"):
            r = admin.post("/api/v1/policies", json={
                "name": ptype, "policy_type": ptype, "performance_tier": "nano" if ptype == "risk_management" else "fast",
                "opa_policy": (ROOT / "rego" / "policies" / ptype / "policy.rego").read_text(), "constitutional_hash": H})
            assert r.status_code == 201, r.text
            ids[ptype] = r.json()
        (tmp / "agent.yaml").write_text(admin.get("/api/v1/opa/config", params={"min_delay_s": 1, "max_delay_s": 2}).text)
        agent = start_opa_agent(tmp / "agent.yaml", tmp / "opa", port=agent_port, extra_args=["--log-level", "error"])
        probe = httpx.Client(base_url=agent.extra["url"], timeout=10)
        deadline = time.monotonic() + 60
        while probe.post(f"/v1/data/{ids['ethical_constraints']['entrypoint']}", json={"input": {}}).json().get("result") is None:
            assert time.monotonic() < deadline, "the OPA agent did not activate the bundle"
            time.sleep(0.2)
        rules_ctx = {**ex["risk_management"]["allow"], "principal": "bench"}
        model_ctx = {**ex["ethical_constraints"]["model_review"], "principal": "bench", "oversight": {"escalation": "bench"}}
        yield {"loop": loop, "tmp": tmp, "cp_port": cp_port, "floor_port": floor_port, "agent_port": agent_port,
               "ids": ids, "rules_ctx": rules_ctx, "model_ctx": model_ctx}
    finally:
        if agent is not None:
            agent.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        ns.stop()
        loop.close()


async def _offered_load(client: HTTPClient, path: str, body: bytes, count: int) -> list[float]:
    """`count` requests at `RATE` per second on a fixed schedule; each latency is measured from the
    request's scheduled time."""
    interval = 1.0 / RATE
    start = time.perf_counter()
    latencies = []
    for i in range(count):
        scheduled = start + i * interval
        now = time.perf_counter()
        if now < scheduled:
            await asyncio.sleep(scheduled - now)
        status, data = await client.post(path, body)
        latencies.append(time.perf_counter() - scheduled)
        assert status == 200, data[:300]
    return latencies


def _stats(latencies: list[float]) -> dict:
    data = sorted(latencies)
    return {"p50_us": round(data[len(data) // 2] * 1e6, 1), "p99_us": round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1e6, 1),
            "requests": len(data), "offered_rps": RATE}


AUTH = b"authorization: Bearer %s\r\n" % TOKEN.encode()


def _evaluate_body(ctx: dict, ptype: str, tier: str) -> dict:
    return {"input_context": ctx, "policy_types": [ptype], "performance_tier": tier, "constitutional_hash": H}


def _contenders(stack) -> dict[str, tuple[int, str, dict, bytes, Any]]:
    """name -> (port, path, body, extra headers, check of one answer)."""
    ids = stack["ids"]

    def rules_allowed(out):
        assert out["decision"] == "allow" and out["applicable_policies"] == [ids["risk_management"]["rule_id"]]

    def model_cached(out):
        assert out["performance_metrics"]["model_calls"] == 1, out
        assert out["policy_results"][0]["groq_inference_result"][0]["cached"] is True, out

    def opa_rules(out):
        assert out["result"]["decision"] == "allow"

    def opa_model(out):
        assert out["result"]["decision"] in ("allow", "review", "deny")

    rules = _evaluate_body(stack["rules_ctx"], "risk_management", "nano")
    return {
        "floor_trivial_litestar": (stack["floor_port"], "/api/v1/evaluate", rules, b"", None),
        "evaluate_rules_nano": (stack["cp_port"], "/api/v1/evaluate", rules, AUTH, rules_allowed),
        "evaluate_model_cached_fast": (stack["cp_port"], "/api/v1/evaluate", _evaluate_body(stack["model_ctx"], "ethical_constraints", "fast"),
                                       AUTH, model_cached),
        "opa_rest_rules": (stack["agent_port"], f"/v1/data/{ids['risk_management']['entrypoint']}", {"input": stack["rules_ctx"]}, b"", opa_rules),
        "opa_rest_model_cached": (stack["agent_port"], f"/v1/data/{ids['ethical_constraints']['entrypoint']}", {"input": stack["model_ctx"]},
                                  b"", opa_model),
    }


def test_api_latency_side_by_side(benchmark, stack):
    """Every contender at `RATE` requests/s, in `BLOCKS` alternating blocks: the floor, then each of the
    others, again and again, so that the machine's drift over the run reaches all of them alike. Each
    block opens a new connection and starts with a few unrecorded requests."""
    contenders = _contenders(stack)
    bodies = {name: msgspec.json.encode(body) for name, (_, _, body, _, _) in contenders.items()}
    result: dict = {}

    async def run() -> None:
        clients = {}
        latencies: dict[str, list[float]] = {name: [] for name in contenders}
        try:
            for name, (port, path, _, headers, check) in contenders.items():
                clients[name] = client = HTTPClient(port, headers)
                await client.connect()
                for _ in range(WARMUP):
                    status, data = await client.post(path, bodies[name])
                    assert status == 200, data[:300]
                if check is not None:
                    check(msgspec.json.decode(data))
            for _ in range(BLOCKS):
                for name, (_, path, _, _, _) in contenders.items():
                    # a fresh connection: servers close one left idle for seconds while the others ran
                    clients[name].close()
                    await clients[name].connect()
                    for _ in range(BLOCK_WARMUP):
                        await clients[name].post(path, bodies[name])
                    latencies[name] += await _offered_load(clients[name], path, bodies[name], REQUESTS // BLOCKS)
        finally:
            for client in clients.values():
                client.close()
        floor = _stats(latencies["floor_trivial_litestar"])["p50_us"]
        for name, lat in latencies.items():
            stats = _stats(lat)
            result[name] = {**stats, "p50_over_floor": round(stats["p50_us"] / floor, 3)}

    benchmark.pedantic(lambda: stack["loop"].run_until_complete(run()), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    (stack["tmp"] / "latency.json").write_text(json.dumps(result))
    for name, row in result.items():
        print(f"\n{name}: {row}")


def _batch_rounds(benchmark, stack, bodies: list[bytes]) -> None:
    """One body per round (after three warm-up rounds): contexts/s as the server reports them
    (`batch_performance`, median and quartiles) and end to end (request sent to response decoded)."""
    result: dict = {}

    async def rounds() -> None:
        client = HTTPClient(stack["cp_port"], AUTH)
        await client.connect()
        try:
            server_tp, client_tp = [], []
            for i, body in enumerate(bodies):
                t0 = time.perf_counter()
                status, data = await client.post("/api/v1/evaluate/batch", body)
                elapsed = time.perf_counter() - t0
                assert status == 200, data[:300]
                out = msgspec.json.decode(data)
                assert len(out["results"]) == 100 and all(r["decision"] == "allow" for r in out["results"])
                if i >= 3:  # warm-up rounds
                    server_tp.append(out["batch_performance"]["throughput_per_second"])
                    client_tp.append(100 / elapsed)
            server_tp.sort()
            client_tp.sort()
            n = len(server_tp)
            result.update(server_contexts_per_s=server_tp[n // 2], server_p25=server_tp[n // 4], server_p75=server_tp[3 * n // 4],
                          end_to_end_contexts_per_s=round(client_tp[n // 2], 1), rounds=n)
        finally:
            client.close()

    benchmark.pedantic(lambda: stack["loop"].run_until_complete(rounds()), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print(f"\n{benchmark.name}: {result}")


def _batch_body(contexts: list[dict]) -> bytes:
    return msgspec.json.encode({"batch_contexts": contexts, "policy_types": ["risk_management"], "performance_tier": "nano",
                                "constitutional_hash": H})


def test_api_batch_throughput(benchmark, stack):
    """100 contexts of one principal (pre-validation, memoised on the principal, runs once)."""
    body = _batch_body([{**stack["rules_ctx"], "n": i} for i in range(100)])
    _batch_rounds(benchmark, stack, [body] * (BATCH_ROUNDS + 3))


def test_api_batch_throughput_distinct_principals(benchmark, stack):
    """Every context of every round from a principal not seen before: pre-validation runs for each."""
    _batch_rounds(benchmark, stack, [_batch_body([{**stack["rules_ctx"], "principal": f"p{k}-{i}"} for i in range(100)])
                                     for k in range(BATCH_ROUNDS + 3)])
