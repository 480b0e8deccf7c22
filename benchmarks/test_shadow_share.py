"""How soon a shadow begun or discarded on one control-plane process takes effect on another (the
shadows' bucket watch), beside the floor: a bare KV put seen by a bare nats-py watch on the same
server. Two control planes in this process (uvicorn threads), one real nats-server.

- `begin_answered`: `POST /api/v1/shadows` sent to A -> A answers (A compiles the candidate first).
- `begin_elsewhere`: the same request sent -> B lists the shadow (B compiles the candidate when the
  watch brings it, after A answered: two WASM builds in a row are most of this).
- `discard_elsewhere`: `POST .../discard` sent to B -> A lists none.
- `kv_watch_floor`: `kv.put` -> a `watchall()` on another connection delivers it.

Blocks of each, interleaved, `ROUNDS` rounds; medians and p90 in ms go to `extra_info` and stdout.
Polling is every 2 ms, so the first two are up to 2 ms late. `GROQPOLICY_BENCH_SHORT=1`: 4 rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import nats

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.impact import shadow_state
from controlplane.infra.processes import start_nats
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.test_evaluate_nats import limit

ROUNDS = 4 if os.environ.get("GROQPOLICY_BENCH_SHORT") == "1" else 15


def _until(predicate, timeout: float = 30.0) -> float:
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < timeout, "not seen in time"
        time.sleep(0.002)
    return time.perf_counter() - start


async def _kv_floor(url: str, rounds: int) -> list[float]:
    writer, reader = await nats.connect(url), await nats.connect(url)
    try:
        kv_w = await writer.jetstream().key_value(shadow_state.BUCKET)
        watcher = await (await reader.jetstream().key_value(shadow_state.BUCKET)).watch("bench.>")
        while await watcher.updates(timeout=5) is not None:  # the initial values
            pass
        samples = []
        for i in range(rounds):
            start = time.perf_counter()
            await kv_w.put("bench.floor", str(i).encode())
            while (entry := await watcher.updates(timeout=5)) is None or entry.value != str(i).encode():
                pass
            samples.append(time.perf_counter() - start)
        await watcher.stop()
        return samples
    finally:
        await writer.close()
        await reader.close()


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2), "n": len(ordered)}


def test_shadow_propagation_side_by_side(benchmark):
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        server = start_nats(tmp / "nats")
        try:
            results = _run(tmp, server.extra["url"])
        finally:
            server.stop()
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nshadow propagation (load average {os.getloadavg()[0]:.2f}): {results}")


def _run(tmp: Path, url: str) -> dict[str, dict[str, float]]:
    shared = {"record_key_file": tmp / "record-key.pem", "bridge_token_file": tmp / "bridge-token",
              "nats_url": url, "compile_on_start": True, "processes": 2}
    a, b = make_settings(tmp / "a", **shared), make_settings(tmp / "b", **shared)
    samples: dict[str, list[float]] = {"begin_answered": [], "begin_elsewhere": [], "discard_elsewhere": [], "kv_watch_floor": []}
    with running_control_plane(a) as sa, running_control_plane(b) as sb, \
            httpx.Client(base_url=a.base_url, headers=ADMIN_HEADERS, timeout=60) as ca, \
            httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=60) as cb:
        created = ca.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management", "opa_policy": limit(100),
                                                    "constitutional_hash": CONSTITUTIONAL_HASH, "performance_tier": "fast"})
        rule = created.json()["rule_id"]
        # both on the revision, and on the serving compiler's code (its compile runs behind the write)
        _until(lambda: all(s.runtime.evaluator.revision == created.json()["bundle_revision"]
                           and not s.runtime.evaluator.on_baseline for s in (sa, sb)), timeout=120)
        for i in range(ROUNDS):
            start = time.perf_counter()
            r = ca.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": limit(50 + i)}})
            assert r.status_code == 201, r.text
            samples["begin_answered"].append(time.perf_counter() - start)
            _until(lambda: cb.get("/api/v1/shadows").json() != [])
            samples["begin_elsewhere"].append(time.perf_counter() - start)
            start = time.perf_counter()
            assert cb.post(f"/api/v1/shadows/{rule}/discard").status_code == 200
            _until(lambda: ca.get("/api/v1/shadows").json() == [])
            samples["discard_elsewhere"].append(time.perf_counter() - start)
            samples["kv_watch_floor"] += asyncio.run(_kv_floor(url, 2))
    return {name: _ms(s) for name, s in samples.items()}
