"""Throughput of `/api/v1/evaluate` with one control-plane process and with `PROCESSES` (2) processes
serving one listening socket (what `groqpolicy up` runs with `GROQPOLICY_PROCESSES`), side by side.

Closed loop: vegeta with a fixed number of workers and no rate (`-rate=0 -max-workers=N`), each
worker sending its next request as soon as the previous one is answered, so the servers run flat
out and the number is how many evaluations per second they answer. Enough workers (`WORKERS`) keep
every process busy. The two contenders take turns in blocks (`BLOCKS` each, the order alternating),
so the machine's drift and the other tenants' load reach both alike; the ratio is of the medians.
The same rules-only policy and request as `test_fixed_load.py` (the library's `risk_management`).
vegeta runs on the same cores: its own share is a cost both contenders pay, more so the faster one.
`GROQPOLICY_BENCH_SHORT=1`: 2 blocks of 1 s. See benchmarks/README.md ("Every core").
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchmarks.harness import TOKEN
from benchmarks.vegeta import ensure_vegeta
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 6
BLOCK_S = 1 if SHORT else 5
WORKERS = 32


def closed_loop(vegeta: Path, work: Path, url: str, body: bytes, seconds: float, token: str = TOKEN) -> dict[str, Any]:
    """`WORKERS` vegeta workers sending back to back for `seconds`; vegeta's JSON report."""
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    (work / "body.json").write_bytes(body)
    auth = f"Authorization: Bearer {token}\n" if token else ""  # the stack's agent runs without authentication
    (work / "targets.txt").write_text(f"POST {url}\nContent-Type: application/json\n{auth}@{work / 'body.json'}\n")
    results = work / "results.bin"
    subprocess.run([str(vegeta), "attack", "-targets", str(work / "targets.txt"), "-rate", "0", "-max-workers", str(WORKERS),
                    "-workers", str(WORKERS), "-duration", f"{seconds}s", "-timeout", "10s", "-output", str(results)],
                   check=True, capture_output=True, timeout=seconds + 60)
    out = subprocess.run([str(vegeta), "report", "-type", "json", str(results)], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.timeout(900)
def test_throughput_one_process_and_two(benchmark, api_stack, capsys):
    try:
        vegeta = ensure_vegeta()
    except RuntimeError as exc:
        pytest.skip(f"vegeta unavailable: {exc}")
    body = msgspec.json.encode({"input_context": api_stack["rules_ctx"], "policy_types": ["risk_management"],
                                "performance_tier": "nano", "constitutional_hash": CONSTITUTIONAL_HASH})
    contenders = {"1 process": api_stack["cp_port"], f"{len(api_stack['multi_pids'])} processes": api_stack["multi_port"]}
    work: Path = api_stack["tmp"] / "closed-loop"
    rps: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, int] = dict.fromkeys(contenders, 0)

    def run() -> None:
        for port in contenders.values():  # warm-up: every process of each has compiled and cached what it serves
            closed_loop(vegeta, work / "warm", f"http://127.0.0.1:{port}/api/v1/evaluate", body, 1)
        names = list(contenders)
        for block in range(BLOCKS):
            for name in names if block % 2 == 0 else names[::-1]:
                report = closed_loop(vegeta, work / name.replace(" ", "-"), f"http://127.0.0.1:{contenders[name]}/api/v1/evaluate",
                                     body, BLOCK_S)
                ok = report["status_codes"].get("200", 0)
                errors[name] += report["requests"] - ok
                rps[name].append(ok / BLOCK_S)

    load_before = os.getloadavg()
    benchmark.pedantic(run, rounds=1, iterations=1)
    load = {"before": load_before, "after": os.getloadavg()}
    one, many = (statistics.median(v) for v in rps.values())
    result = {"requests_per_s": {k: [round(x) for x in v] for k, v in rps.items()}, "median": {k: round(statistics.median(v)) for k, v in rps.items()},
              "ratio": round(many / one, 2), "non_200": errors, "workers": WORKERS, "load_average": load}
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\nclosed loop, {WORKERS} workers, {BLOCKS} blocks of {BLOCK_S} s each: {result}")
    assert errors == dict.fromkeys(contenders, 0), errors


BATCH = 100  # contexts per batch, the API's maximum
BATCH_ROUNDS = 3 if SHORT else 40  # batches per block and contender, one after another on one connection


def batch_rounds(stack, port: int, rounds: int, first: int) -> tuple[float, float]:
    """`rounds` batches of `BATCH` contexts, every principal new; (end-to-end contexts/s over the
    block, median of the server-reported contexts/s)."""
    from benchmarks.harness import HTTPClient

    bodies = [msgspec.json.encode({"batch_contexts": [{**stack["rules_ctx"], "principal": f"p{first + k}-{i}"} for i in range(BATCH)],
                                   "policy_types": ["risk_management"], "performance_tier": "nano",
                                   "constitutional_hash": CONSTITUTIONAL_HASH}) for k in range(rounds)]

    async def run() -> tuple[float, float]:
        import time

        client = HTTPClient(port, f"Authorization: Bearer {TOKEN}\r\n".encode())
        await client.connect()
        try:
            server = []
            t0 = time.perf_counter()
            for body in bodies:
                status, data = await client.post("/api/v1/evaluate/batch", body)
                assert status == 200, data[:300]
                out = msgspec.json.decode(data)
                assert len(out["results"]) == BATCH and all(r["decision"] == "allow" for r in out["results"])
                server.append(out["batch_performance"]["throughput_per_second"])
            return rounds * BATCH / (time.perf_counter() - t0), statistics.median(server)
        finally:
            client.close()

    return stack["loop"].run_until_complete(run())


@pytest.mark.timeout(900)
def test_batch_across_processes_and_the_agent(benchmark, api_stack, capsys):
    """Batch contexts/s (distinct principals) with one process and with two (the batch split across
    them), side by side in blocks, and in the same blocks the OPA agent's REST API on the same policy,
    one context per request, closed loop with `WORKERS` vegeta workers (as many contexts/s as it answers)."""
    try:
        vegeta = ensure_vegeta()
    except RuntimeError as exc:
        pytest.skip(f"vegeta unavailable: {exc}")
    entry = api_stack["ids"]["risk_management"]["entrypoint"]
    agent_url = f"http://127.0.0.1:{api_stack['agent_port']}/v1/data/{entry}"
    agent_body = msgspec.json.encode({"input": api_stack["rules_ctx"]})
    ports = {"batch, 1 process": api_stack["cp_port"], f"batch, {len(api_stack['multi_pids'])} processes": api_stack["multi_port"]}
    e2e: dict[str, list[float]] = {name: [] for name in [*ports, "opa agent REST"]}
    server: dict[str, list[float]] = {name: [] for name in ports}
    work: Path = api_stack["tmp"] / "agent-closed-loop"

    def run() -> None:
        for port in ports.values():
            batch_rounds(api_stack, port, 3, first=-10)
        n = 0
        for block in range(BLOCKS):
            order = [*ports, "opa agent REST"]
            for name in order if block % 2 == 0 else order[::-1]:
                if name in ports:
                    n += BATCH_ROUNDS
                    rate, median = batch_rounds(api_stack, ports[name], BATCH_ROUNDS, first=n)
                    e2e[name].append(rate)
                    server[name].append(median)
                else:
                    report = closed_loop(vegeta, work, agent_url, agent_body, BLOCK_S, token="")
                    e2e[name].append(report["status_codes"].get("200", 0) / BLOCK_S)

    load_before = os.getloadavg()
    benchmark.pedantic(run, rounds=1, iterations=1)
    load = {"before": load_before, "after": os.getloadavg()}
    medians = {k: round(statistics.median(v)) for k, v in e2e.items()}
    agent = medians["opa agent REST"]
    result = {"end_to_end_contexts_per_s": medians, "server_reported_median": {k: round(statistics.median(v)) for k, v in server.items()},
              "vs_agent": {k: round(v / agent, 1) for k, v in medians.items() if k in ports}, "load_average": load}
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\nbatch of {BATCH} distinct principals vs the agent ({WORKERS} workers), {BLOCKS} blocks: {result}")

