"""`data` shared by the pool (one memory image per revision) against parsed per instance, under
`make bench`: memory per extra pooled instance for a 1 MB and a 10 MB `data` document, and the
evaluation speed of both modes in interleaved blocks. The measurements are those of
`benchmarks/wasm/datashare.py` (its docstring says how); nothing here asserts a time or a size.
`GROQPOLICY_BENCH_SHORT=1`: the 1 MB document only, one process per mode, shorter blocks.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest

from benchmarks.harness import interleaved, local_runner, stats
from benchmarks.realistic.policies import _filter_data
from benchmarks.wasm.datashare import FILTER_INPUT, ITEMS, _child, _filter_wasm

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
SIZES = ["1MB"] if SHORT else list(ITEMS)
EXTRA = 4 if SHORT else 8


@pytest.mark.parametrize("size", SIZES)
def test_memory_per_pooled_instance(benchmark, size: str, capsys) -> None:
    rows: dict[str, Any] = {}

    def measure() -> None:
        for r in range(1 if SHORT else 2):
            for share in ((True, False) if r % 2 == 0 else (False, True)):
                rows.setdefault("shared" if share else "per_instance", []).append(_child(size, share, EXTRA))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    out = {mode: {"pss_mib_per_extra_instance": max(m["per_instance_after_eval_kib"]["pss"] for m in ms) / 1024,
                  "image_mib": ms[0]["image_bytes"] / 2**20, "new_instance_ms": min(m["new_instance_s"] for m in ms) * 1000}
           for mode, ms in rows.items()}
    benchmark.extra_info.update(out)
    with capsys.disabled():
        print(f"\n{size} data, load average {os.getloadavg()[0]:.1f}: " + "; ".join(
            f"{mode}: {o['pss_mib_per_extra_instance']:.2f} MiB PSS per extra instance (worst of the runs), "
            f"image {o['image_mib']:.1f} MiB, new instance {o['new_instance_ms']:.1f} ms" for mode, o in out.items()))


def test_evaluation_speed_shared_vs_per_instance(benchmark, capsys) -> None:
    from bridge.opawasm.policy import WasmPolicy

    wasm, data = _filter_wasm(), msgspec.json.encode(_filter_data())
    inp = msgspec.json.encode(FILTER_INPUT)
    policies = {mode: WasmPolicy(wasm, data, share_data=mode == "shared", pool_size=1) for mode in ("per_instance", "shared")}
    want = policies["per_instance"].evaluate_raw("bench/filter/result", inp)
    assert policies["shared"].evaluate_raw("bench/filter/result", inp) == want
    runners = {mode: local_runner(lambda p=p: p.evaluate_raw("bench/filter/result", inp)) for mode, p in policies.items()}
    times: dict[str, list[float]] = {}
    benchmark.pedantic(lambda: times.update(interleaved(runners, 10 if SHORT else 40, 5, 0.5)), rounds=1, iterations=1)
    row = {mode: stats(t) for mode, t in times.items()}
    benchmark.extra_info.update(row)
    with capsys.disabled():
        ratio = row["shared"]["median_us"] / row["per_instance"]["median_us"]
        print(f"\ndata_filter 1MB, load average {os.getloadavg()[0]:.1f}: per-instance {row['per_instance']['median_us']:.0f} µs, "
              f"shared {row['shared']['median_us']:.0f} µs, shared/per-instance {ratio:.3f}")
