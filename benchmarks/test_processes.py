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


def closed_loop(vegeta: Path, work: Path, url: str, body: bytes, seconds: float) -> dict[str, Any]:
    """`WORKERS` vegeta workers sending back to back for `seconds`; vegeta's JSON report."""
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    (work / "body.json").write_bytes(body)
    (work / "targets.txt").write_text(f"POST {url}\nContent-Type: application/json\nAuthorization: Bearer {TOKEN}\n"
                                      f"@{work / 'body.json'}\n")
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
