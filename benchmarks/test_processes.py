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
from benchmarks.vegeta import attack_report, ensure_vegeta
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 6
BLOCK_S = 1 if SHORT else 5
WORKERS = 32


def closed_loop(vegeta: Path, work: Path, url: str, body: bytes, seconds: float, token: str = TOKEN) -> dict[str, Any]:
    """`WORKERS` vegeta workers sending back to back for `seconds`; vegeta's JSON report."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "body.json").write_bytes(body)
    auth = f"Authorization: Bearer {token}\n" if token else ""  # the stack's agent runs without authentication
    (work / "targets.txt").write_text(f"POST {url}\nContent-Type: application/json\n{auth}@{work / 'body.json'}\n")
    return attack_report(vegeta, work, ["-targets", str(work / "targets.txt"), "-rate", "0", "-max-workers", str(WORKERS),
                                        "-workers", str(WORKERS)], seconds)


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
BATCH_WORKERS = 4  # vegeta workers sending batches: enough to keep both processes busy, a few per process
BATCH_BODIES = 800 if SHORT else 3000  # distinct request bodies per block, more than a block sends


def batch_body(stack, tag: str) -> bytes:
    return msgspec.json.encode({"batch_contexts": [{**stack["rules_ctx"], "principal": f"{tag}-{i}"} for i in range(BATCH)],
                                "policy_types": ["risk_management"], "performance_tier": "nano",
                                "constitutional_hash": CONSTITUTIONAL_HASH})


def checked_batches(stack, port: int, rounds: int, first: int) -> None:
    """`rounds` batches on one connection, every answer read: 100 results, each an allow (the closed
    loop below does not read its answers, only their status)."""
    from benchmarks.harness import HTTPClient

    async def run() -> None:
        client = HTTPClient(port, f"Authorization: Bearer {TOKEN}\r\n".encode())
        await client.connect()
        try:
            for k in range(rounds):
                status, data = await client.post("/api/v1/evaluate/batch", batch_body(stack, f"check{first + k}"))
                assert status == 200, data[:300]
                out = msgspec.json.decode(data)
                assert len(out["results"]) == BATCH and all(r["decision"] == "allow" for r in out["results"])
        finally:
            client.close()

    stack["loop"].run_until_complete(run())


def batch_closed_loop(vegeta: Path, work: Path, stack, port: int, block: int, seconds: float) -> dict[str, Any]:
    """`BATCH_WORKERS` vegeta workers sending batches back to back for `seconds`, every request a body
    of its own (principals never seen before: `BATCH_BODIES` of them, read lazily); vegeta's JSON report."""
    import base64

    work.mkdir(parents=True, exist_ok=True)
    targets = work / "targets.jsonl"
    url = f"http://127.0.0.1:{port}/api/v1/evaluate/batch"
    header = {"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]}
    with targets.open("w") as f:
        for k in range(BATCH_BODIES):
            body = base64.b64encode(batch_body(stack, f"b{port}-{block}-{k}")).decode()
            f.write(json.dumps({"method": "POST", "url": url, "header": header, "body": body}) + "\n")
    report = attack_report(vegeta, work, ["-format", "json", "-lazy", "-targets", str(targets), "-rate", "0",
                                          "-max-workers", str(BATCH_WORKERS), "-workers", str(BATCH_WORKERS)], seconds)
    assert report["requests"] < BATCH_BODIES, "the block ran out of distinct bodies: raise BATCH_BODIES"
    return report


@pytest.mark.timeout(900)
def test_batch_across_processes_and_the_agent(benchmark, api_stack, capsys):
    """Batch contexts/s (distinct principals) with one process and with two, and the OPA agent's REST
    API on the same policy, one context per request, side by side in blocks. Both driven the same way:
    a vegeta closed loop (`BATCH_WORKERS` workers sending batches of `BATCH`; `WORKERS` sending the
    agent's single contexts), so each number is as many contexts/s as that server answers."""
    try:
        vegeta = ensure_vegeta()
    except RuntimeError as exc:
        pytest.skip(f"vegeta unavailable: {exc}")
    entry = api_stack["ids"]["risk_management"]["entrypoint"]
    agent_url = f"http://127.0.0.1:{api_stack['agent_port']}/v1/data/{entry}"
    agent_body = msgspec.json.encode({"input": api_stack["rules_ctx"]})
    ports = {"batch, 1 process": api_stack["cp_port"], f"batch, {len(api_stack['multi_pids'])} processes": api_stack["multi_port"]}
    rates: dict[str, list[float]] = {name: [] for name in [*ports, "opa agent REST"]}
    errors: dict[str, int] = dict.fromkeys(rates, 0)
    work: Path = api_stack["tmp"] / "batch-closed-loop"

    def run() -> None:
        for n, port in enumerate(ports.values()):  # answers checked, and every process warm (both ways of a batch)
            checked_batches(api_stack, port, 12, first=100 * n)
        for block in range(BLOCKS):
            order = [*ports, "opa agent REST"]
            for name in order if block % 2 == 0 else order[::-1]:
                if name in ports:
                    report = batch_closed_loop(vegeta, work / "batch", api_stack, ports[name], block, BLOCK_S)
                    per_request = BATCH
                else:
                    report = closed_loop(vegeta, work / "agent", agent_url, agent_body, BLOCK_S, token="")
                    per_request = 1
                ok = report["status_codes"].get("200", 0)
                errors[name] += report["requests"] - ok
                rates[name].append(ok * per_request / BLOCK_S)

    load_before = os.getloadavg()
    benchmark.pedantic(run, rounds=1, iterations=1)
    load = {"before": load_before, "after": os.getloadavg()}
    medians = {k: round(statistics.median(v)) for k, v in rates.items()}
    agent = medians["opa agent REST"]
    result = {"contexts_per_s": {k: [round(x) for x in v] for k, v in rates.items()}, "median": medians,
              "vs_agent": {k: round(v / agent, 1) for k, v in medians.items() if k in ports}, "non_200": errors,
              "batch_workers": BATCH_WORKERS, "agent_workers": WORKERS, "load_average": load}
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\nbatches of {BATCH} distinct principals ({BATCH_WORKERS} workers) vs the agent ({WORKERS} workers), "
              f"{BLOCKS} blocks of {BLOCK_S} s: {result}")
    assert errors == dict.fromkeys(rates, 0), errors
