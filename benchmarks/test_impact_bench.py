"""Impact analysis and shadow mode (issue 16): replay throughput, and what a shadow costs the live path.

Every server is its own process: nats-server, the emulator, one inference worker and the control
plane (`python -m controlplane.ops.cli serve`). Two stored policies: `limits` (rules only) and
`judge` (asks the model through `lib.groq`, i.e. `http.send` on a worker thread).

- `test_replay_throughput`: the replay and the in-process batch rate side by side, in interleaved
  blocks: each round, for the rules-only decisions (`policy_types: [risk_management]`) and for those
  that consulted the model too, a batch block (`RECORDED` contexts through the batch API, its
  server-side contexts/s; they are recorded) and then a replay block (those decisions through a
  candidate that tightens the `limits` rule: no prompt changes, so every judgment is answered from
  the recording), twice in turn: with the configured helper processes (one per core beyond the
  first) and by the control plane's process alone (`helpers: 0`). The replay's number is the
  report's `decisions_per_s` (every recorded decision through the candidate's pipeline, helpers'
  start included; the candidate's module is compiled once, by a small replay before the first
  round); `wall_s` adds reading the window from JetStream and compiling the candidate. The
  results to read are the median per-round ratios replay/batch and with helpers/alone.
- `test_changed_prompt_online_vs_batch`: `RECORDED` decisions that consulted the model, replayed
  through a candidate that rewords `judge`'s question (so all `TEXTS` judgments are asked anew),
  the changed judgments asked online (the worker, now) and through the Batch API (passes), in
  alternating rounds, each round with a wording of its own (no cache answers either contender).
- `test_shadow_latency_side_by_side`: `/api/v1/evaluate` (the `limits` policy) at a fixed offered load,
  with no shadow, with a shadow of `limits` at the default share (0.1) and at every request (1.0),
  in alternating blocks; p50 and p99 each.

`GROQPOLICY_BENCH_SHORT=1` cuts both to a few seconds. Numbers: benchmarks/README.md (issue 16).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from benchmarks.conftest import wait_optimized
from benchmarks.harness import HTTPClient, spawn
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.processes import free_port, start_nats, wait_for_port
from tests.test_impact import JUDGE, LIMIT, TIGHTER

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
RECORDED = 2_000 if SHORT else 20_000  # decisions per contender
ROUNDS = 1 if SHORT else 3
TEXTS = 50  # distinct texts: the model is asked 50 questions, then answers from its caches
RATE = 200.0
REQUESTS = 300 if SHORT else 3000
BLOCKS = 2 if SHORT else 10
TOKEN = "bench-admin-token-0000000000000"


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="bench-impact-"))
    ns = start_nats(tmp / "nats")
    url = ns.extra["url"]
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    procs: list[subprocess.Popen] = []
    try:
        emu_port, cp_port = free_port(), free_port()
        procs.append(spawn([sys.executable, "-m", "bridge.emulator", "--port", str(emu_port)], tmp / "emu.log", env))
        wait_for_port(emu_port, proc=procs[-1])
        procs.append(spawn([sys.executable, "-m", "bridge.inference.worker"], tmp / "worker.log",
                           dict(env, NATS_URL=url, GROQPOLICY_EMULATOR_URL=f"http://127.0.0.1:{emu_port}")))
        cp_env = dict(env, GROQPOLICY_NATS_URL=url, GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate+agent",
                      GROQPOLICY_RATE_LIMIT="off", GROQPOLICY_SHADOW_MAX_DIVERGENCE="1",
                      GROQPOLICY_EMULATOR_URL=f"http://127.0.0.1:{emu_port}", GROQPOLICY_BATCH_POLL_S="0.05")
        procs.append(spawn([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(cp_port), "--state-dir",
                            str(tmp / "state"), "--log-level", "warning"], tmp / "cp.log", cp_env))
        wait_for_port(cp_port, timeout=90, proc=procs[-1])
        admin = httpx.Client(base_url=f"http://127.0.0.1:{cp_port}", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=600)
        ids = {}
        for name, kind, text in (("limits", "risk_management", LIMIT), ("judge", "ethical_constraints", JUDGE)):
            r = admin.post("/api/v1/policies", json={"name": name, "policy_type": kind, "opa_policy": text,
                                                     "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["rule_id"]
        wait_optimized(cp_port, [procs[-1].pid])  # the batch rate and the live p50 are timed on the serving code
        yield {"admin": admin, "ids": ids, "cp_port": cp_port}
        admin.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        ns.stop()


def _context(i: int) -> dict:
    return {"principal": {"id": f"svc-{i % 97}"}, "amount": i % 150, "text": f"note {i % TEXTS}: a friendly reminder"}


def _record(admin: httpx.Client, types: list[str], offset: int) -> float:
    """Record `RECORDED` decisions through the batch API; the median of its server-side contexts/s
    (the in-process batch rate, the peer of the replay rate, measured on the same decisions)."""
    rates = []
    for start in range(0, RECORDED, 100):
        r = admin.post("/api/v1/evaluate/batch", json={
            "batch_contexts": [_context(offset + i) for i in range(start, start + 100)], "policy_types": types,
            "performance_tier": "fast"})
        assert r.status_code == 200, r.text[:300]
        rates.append(r.json()["batch_performance"]["throughput_per_second"])
    return round(statistics.median(rates))


def _replay(admin: httpx.Client, rule_id: str, helpers: int | None = None) -> tuple[dict, float]:
    """One replay of the newest `RECORDED` decisions; `helpers`: as the request's (None: the configured
    count, one per core beyond the first; 0: the control plane's process alone)."""
    t0 = time.perf_counter()
    r = admin.post("/api/v1/impact", json={"candidate": {"rule_id": rule_id, "opa_policy": TIGHTER}, "count": RECORDED,
                                           **({} if helpers is None else {"helpers": helpers})})
    wall = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:300]
    report = r.json()
    assert report["decisions"] == RECORDED and report["model_calls"]["new"] == 0, report["model_calls"]
    return report, wall


def test_replay_throughput(benchmark, stack):
    """The replay and its peer, the in-process batch rate, side by side in interleaved blocks.

    Each round, for each kind of decision in turn: a batch block (`RECORDED` contexts through
    `/api/v1/evaluate/batch`, whose server-side contexts/s is the in-process batch rate of the same
    policies on the same machine at that moment; those decisions are recorded) and then a replay
    block (the newest `RECORDED` decisions, i.e. that block's, through a candidate that tightens
    `limits`). A ratio is taken within one round, from two blocks a few seconds apart, so the load
    other processes put on the machine meanwhile moves both sides alike; the rounds alternate the
    kinds, so neither kind always runs first. The number to read is the median of the per-round
    ratios replay/batch."""
    admin, ids = stack["admin"], stack["ids"]
    kinds = {"rules_only": ["risk_management"], "with_model_judgments": ["risk_management", "ethical_constraints"]}
    results: dict[str, dict] = {name: {"replay_decisions_per_s": [], "batch_contexts_per_s": [], "ratio": [],
                                       "alone_decisions_per_s": [], "helped_vs_alone": [], "helper_decisions": [],
                                       "wall_s": [], "load_avg_1m": []} for name in kinds}
    offset = 0

    def run() -> None:
        nonlocal offset
        for n in range(ROUNDS):
            order = list(kinds) if n % 2 == 0 else list(reversed(kinds))
            for name in order:
                row = results[name]
                row["load_avg_1m"].append(round(os.getloadavg()[0], 2))
                batch_rate = _record(admin, kinds[name], offset)
                offset += RECORDED
                _wait_recorded(stack)
                if offset == RECORDED:  # the candidate's module is compiled once (1-3 s), not in a timed replay
                    admin.post("/api/v1/impact", json={"candidate": {"rule_id": ids["limits"], "opa_policy": TIGHTER},
                                                       "count": 10}).raise_for_status()
                found = {}
                for helpers in ((None, 0) if n % 2 == 0 else (0, None)):  # with helpers and alone, in turn
                    report, wall = _replay(admin, ids["limits"], helpers)
                    assert report["model_calls"]["failed"] == 0
                    if name == "with_model_judgments":
                        assert report["model_calls"]["recorded"] == TEXTS  # every judgment from the recording
                    found[helpers] = report, wall
                (report, wall), (alone, _) = found[None], found[0]
                assert alone["helper_decisions"] == 0 and alone["matrix"] == report["matrix"]
                row["replay_decisions_per_s"].append(round(report["decisions_per_s"]))
                row["alone_decisions_per_s"].append(round(alone["decisions_per_s"]))
                row["helped_vs_alone"].append(round(report["decisions_per_s"] / alone["decisions_per_s"], 2))
                row["helper_decisions"].append(report["helper_decisions"])
                row["batch_contexts_per_s"].append(batch_rate)
                row["ratio"].append(round(report["decisions_per_s"] / batch_rate, 2))
                row["wall_s"].append(round(wall, 2))

    benchmark.pedantic(run, rounds=1, iterations=1)
    for row in results.values():
        row["median_ratio"] = statistics.median(row["ratio"])
        row["median_helped_vs_alone"] = statistics.median(row["helped_vs_alone"])
    benchmark.extra_info.update({"decisions": RECORDED, **results})
    print("\nreplay:", results)


def _wait_recorded(stack: dict) -> None:
    """The replay store publishes in the background, a few times a second: wait until the control
    plane's counter says nothing is pending (at most 30 s)."""
    admin = stack["admin"]
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        text = admin.get("/metrics").text
        now = [line for line in text.splitlines() if line.startswith("groqpolicy_replay_entries_total")]
        if now == last:
            return
        last = now


def test_changed_prompt_online_vs_batch(benchmark, stack):
    admin, ids = stack["admin"], stack["ids"]
    results: dict[str, list[dict]] = {"online": [], "batch": []}

    def run() -> None:
        _record(admin, ["risk_management", "ethical_constraints"], 3 * RECORDED)
        time.sleep(1.0)  # the replay store publishes in the background
        for n in range(ROUNDS + 1):
            for via in ("online", "batch"):
                changed = JUDGE.replace("Is this text harmful?", f"Is this text harmful (round {n}, {via})?")
                t0 = time.perf_counter()
                r = admin.post("/api/v1/impact", json={"candidate": {"rule_id": ids["judge"], "opa_policy": changed},
                                                       "count": RECORDED, "via": via})
                wall = time.perf_counter() - t0
                assert r.status_code == 200, r.text[:300]
                calls = r.json()["model_calls"]
                results[via].append({"wall_s": round(wall, 2), "decisions_per_s": round(r.json()["decisions_per_s"]),
                                     "new": calls["new"], "failed": calls["failed"], "cost_usd": calls["cost_usd"],
                                     "batches": len(calls["batches"])})

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({"decisions": RECORDED, "distinct_judgments": TEXTS, **results})
    print("\nchanged prompt:", results)


async def _offered_load(client: HTTPClient, body: bytes, count: int) -> list[float]:
    """`count` requests at `RATE` per second on a fixed schedule, each measured from its scheduled time."""
    start = time.perf_counter()
    out = []
    for i in range(count):
        scheduled = start + i / RATE
        if (wait := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        status, data = await client.post("/api/v1/evaluate", body)
        out.append(time.perf_counter() - scheduled)
        assert status == 200, data[:300]
    return out


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return round(data[min(len(data) - 1, int(len(data) * q))] * 1e6, 1)


def test_shadow_latency_side_by_side(benchmark, stack):
    """No shadow, a shadow at the default share (0.1) and one evaluating every request, in alternating blocks."""
    admin, ids = stack["admin"], stack["ids"]
    body = msgspec.json.encode({"input_context": _context(60), "policy_types": ["risk_management"],
                                "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH})
    contenders = {"shadow_off": None, "shadow_sample_0.1": 0.1, "shadow_sample_1": 1.0}
    latencies: dict[str, list[float]] = {name: [] for name in contenders}
    compared = dict.fromkeys(contenders, 0)

    async def block(name: str) -> None:
        client = HTTPClient(stack["cp_port"], b"authorization: Bearer %s\r\n" % TOKEN.encode())
        await client.connect()
        try:
            for _ in range(20):
                await client.post("/api/v1/evaluate", body)
            latencies[name] += await _offered_load(client, body, REQUESTS // BLOCKS)
        finally:
            client.close()

    def run() -> None:
        for _ in range(BLOCKS):
            for name, sample in contenders.items():
                if sample is not None:
                    r = admin.post("/api/v1/shadows", json={"candidate": {"rule_id": ids["limits"], "opa_policy": TIGHTER},
                                                            "sample": sample})
                    assert r.status_code == 201, r.text
                asyncio.run(block(name))
                if sample is not None:
                    time.sleep(0.1)
                    compared[name] += admin.get("/api/v1/shadows").json()[0]["compared"]
                    assert admin.post(f"/api/v1/shadows/{ids['limits']}/discard").status_code == 200

    benchmark.pedantic(run, rounds=1, iterations=1)
    stats: dict = {name: {"p50_us": _pct(v, 0.5), "p99_us": _pct(v, 0.99), "requests": len(v),
                          "compared_by_the_shadow": compared[name]} for name, v in latencies.items()}
    for name in ("shadow_sample_0.1", "shadow_sample_1"):
        stats[name]["p50_ratio_to_off"] = round(stats[name]["p50_us"] / stats["shadow_off"]["p50_us"], 3)
    benchmark.extra_info.update(stats)
    print("\nshadow:", stats)
    assert compared["shadow_sample_1"] >= len(latencies["shadow_sample_1"]) * 0.9  # it really evaluated (almost) all
