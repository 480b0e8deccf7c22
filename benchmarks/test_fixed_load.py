"""Fixed offered load (open loop, vegeta) at 250, 500 and 1,000 requests/s against `/api/v1/evaluate`
and, in the same run, the OPA agent on the same policy, plus the framework floor.

Contenders (all on the shared stack of `conftest.py`; the policy is the library's rules-only
`risk_management`, stored through the API, so both engines run the same signed bundle):

    floor              the trivial Litestar app decoding the same request (the framework floor)
    evaluate_rules     POST /api/v1/evaluate on the control plane (bearer guard, constitution, WASM, audit)
    evaluate_2proc     the same on two control-plane processes serving one socket (`GROQPOLICY_PROCESSES=2`;
                       the memory column is the first process's)
    opa_agent_info     POST /v1/data/<policy>/decision on an agent launched exactly as `make run` launches
                       it (`launch_opa_agent`: info-level logs)
    opa_agent_error    the same request on the stack's agent at error-level logs

For each rate, each contender gets one attack (`DURATION_S` seconds; the order rotates per rate so
no contender always follows the same one). vegeta measures each latency from the moment the request
was due, adding workers rather than waiting, so a stall lands in the p99 instead of lowering the
load. After each attack the server's resident memory is read from /proc. `GROQPOLICY_BENCH_SHORT=1`
(bench-ci): 2 s per attack; `make bench`: 15 s. See benchmarks/README.md (issue 18).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from benchmarks.harness import TOKEN
from benchmarks.vegeta import attack, ensure_vegeta
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import start_opa_agent

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
RATES = [250, 500, 1000]
DURATION_S = 2 if SHORT else 15
WARMUP_S = 1
UPLOAD_WAIT_S = 5
RESULTS: dict[int, dict[str, dict[str, Any]]] = {}


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@pytest.fixture(scope="module")
def info_agent(api_stack):
    """A second agent, launched as `make run` launches it (no log-level override)."""
    tmp: Path = api_stack["tmp"]
    cfg = api_stack["admin"].get("/api/v1/opa/config", params={"agent_id": "bench-info", "min_delay_s": 1, "max_delay_s": 2})
    (tmp / "agent-info.yaml").write_text(cfg.text)
    agent = start_opa_agent(tmp / "agent-info.yaml", tmp / "opa-info")
    entry = api_stack["ids"]["risk_management"]["entrypoint"]
    probe = httpx.Client(base_url=agent.extra["url"], timeout=10)
    deadline = time.monotonic() + 60
    while probe.post(f"/v1/data/{entry}", json={"input": api_stack["rules_ctx"]}).json().get("result") is None:
        assert time.monotonic() < deadline, "the info-level OPA agent did not activate the bundle"
        time.sleep(0.2)
    yield agent
    agent.stop()


def _targets(stack, info_agent) -> dict[str, tuple[str, bytes, dict[str, str], int | None]]:
    """name -> (url, body, headers, server pid for the memory reading)."""
    entry = stack["ids"]["risk_management"]["entrypoint"]
    evaluate = msgspec.json.encode({"input_context": stack["rules_ctx"], "policy_types": ["risk_management"],
                                    "performance_tier": "nano", "constitutional_hash": CONSTITUTIONAL_HASH})
    opa_body = msgspec.json.encode({"input": stack["rules_ctx"]})
    json_h = {"Content-Type": "application/json"}
    return {
        "floor": (f"http://127.0.0.1:{stack['floor_port']}/api/v1/evaluate", evaluate, json_h, stack["floor_pid"]),
        "evaluate_rules": (f"http://127.0.0.1:{stack['cp_port']}/api/v1/evaluate", evaluate, {**json_h, "Authorization": f"Bearer {TOKEN}"},
                           stack["cp_pid"]),
        "evaluate_2proc": (f"http://127.0.0.1:{stack['multi_port']}/api/v1/evaluate", evaluate,
                           {**json_h, "Authorization": f"Bearer {TOKEN}"}, stack["multi_pids"][0]),
        "opa_agent_info": (f"{info_agent.extra['url']}/v1/data/{entry}", opa_body, json_h, info_agent.proc.pid),
        "opa_agent_error": (f"http://127.0.0.1:{stack['agent_port']}/v1/data/{entry}", opa_body, json_h, stack["agent"].proc.pid),
    }


def _storage(stack) -> dict[str, int]:
    """The audit stream's bytes and records, and the agents' decision-log file, right now."""
    import nats

    from controlplane.audit.stream import STREAM

    async def info() -> tuple[int, int]:
        nc = await nats.connect(stack["nats_url"])
        try:
            state = (await nc.jetstream().stream_info(STREAM)).state
            return state.bytes, state.messages
        finally:
            await nc.close()

    stream_bytes, records = stack["loop"].run_until_complete(info())
    # the live file and its rotated generations (.1, .2, ...), not the quarantine
    logs = [p for p in stack["state_dir"].glob("decision_logs.jsonl*") if not p.name.endswith(".quarantine")]
    return {"stream_bytes": stream_bytes, "records": records, "decision_log_bytes": sum(p.stat().st_size for p in logs)}


def _row(report: dict[str, Any], rss: float | None) -> dict[str, Any]:
    lat = report["latencies"]
    return {"p50_ms": round(lat["50th"] / 1e6, 2), "p90_ms": round(lat["90th"] / 1e6, 2), "p99_ms": round(lat["99th"] / 1e6, 2),
            "max_ms": round(lat["max"] / 1e6, 1), "achieved_rps": round(report["rate"], 1), "success": report["success"],
            "requests": report["requests"], "status_codes": report["status_codes"], "errors": report["errors"][:3], "rss_mib": rss}


def _growth(before: dict[str, int], after: dict[str, int], results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Storage per evaluation: the audit stream holds the control plane's records and the agents'
    uploaded decisions; the decision-log file only the agents'. Warm-up requests count too."""
    api = 2 * WARMUP_S * 100 + sum(row[n]["requests"] for row in results.values() for n in ("evaluate_rules", "evaluate_2proc"))
    agents = 2 * WARMUP_S * 100 + sum(row[n]["requests"] for row in results.values() for n in ("opa_agent_info", "opa_agent_error"))
    delta = {k: after[k] - before[k] for k in after}
    return {**delta, "api_evaluations": api, "agent_decisions": agents,
            "stream_bytes_per_evaluation": round(delta["stream_bytes"] / max(1, api + agents), 1),
            "decision_log_bytes_per_agent_decision": round(delta["decision_log_bytes"] / max(1, agents), 1)}


@pytest.mark.timeout(1800)  # the full run is 12 attacks of 15 s plus warm-ups, on a loaded machine
def test_fixed_load(benchmark, api_stack, info_agent, capsys):
    try:
        vegeta = ensure_vegeta()
    except RuntimeError as exc:
        pytest.skip(f"vegeta unavailable: {exc}")
    targets = _targets(api_stack, info_agent)
    work: Path = api_stack["tmp"] / "vegeta"
    names = list(targets)

    def run() -> None:
        for name, (url, body, headers, _) in targets.items():
            warm = attack(vegeta, work / name, url, body, headers, 100, WARMUP_S)
            # at 100/s every server answers everything: anything else is a broken setup, not a number
            assert warm["status_codes"] == {"200": warm["requests"]}, (name, warm["status_codes"], warm["errors"])
        for i, rate in enumerate(RATES):
            for name in names[i % len(names):] + names[:i % len(names)]:
                url, body, headers, pid = targets[name]
                report = attack(vegeta, work / name, url, body, headers, rate, DURATION_S)
                RESULTS.setdefault(rate, {})[name] = row = _row(report, _rss_mib(pid) if pid else None)
                print(f"\n{rate}/s {name}: {row}", flush=True)

    load_before = os.getloadavg()
    before = _storage(api_stack)
    benchmark.pedantic(run, rounds=1, iterations=1)
    time.sleep(UPLOAD_WAIT_S)  # the agents upload their decision logs every 1-2 s
    growth = _growth(before, _storage(api_stack), RESULTS)
    load = {"before": load_before, "after": os.getloadavg()}
    benchmark.extra_info.update({str(rate): row for rate, row in RESULTS.items()}, load_average=load, storage_growth=growth)
    lines = ["", f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}", f"{'rate':>5} {'contender':<16} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'got/s':>7} {'ok':>6} {'RSS MiB':>8}"]
    for rate, row in RESULTS.items():
        for name, r in row.items():
            lines.append(f"{rate:>5} {name:<16} {r['p50_ms']:>7} {r['p90_ms']:>7} {r['p99_ms']:>7} {r['max_ms']:>7} {r['achieved_rps']:>7} "
                         f"{r['success']:>6.3f} {r['rss_mib']!s:>8}")
    lines.append(f"storage growth: {growth}")
    with capsys.disabled():  # the table shows in `make bench-ci` too
        print("\n".join(lines))  # errors under load are results (the `ok` column), reported rather than failed
    if out := os.environ.get("GROQPOLICY_BENCH_JSON"):
        Path(out).with_suffix(".fixed_load.json").write_text(json.dumps(RESULTS, indent=1))
