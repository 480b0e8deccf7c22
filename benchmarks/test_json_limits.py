"""What the JSON nesting limit costs: `json_depth_exceeds` (run on every request body before it is
decoded) side by side with the decode it protects (`msgspec.json.decode` of the same bytes), on
the bodies the control plane sees: a typical evaluate request, a batch of 100 contexts, a 1 MB batch
(brackets well past the limit, so the full scan runs), and a hostile 5,000-level document (refused;
its decode raises RecursionError, which is why the check exists).

The contenders alternate in blocks of 50 calls (check, decode, check, ...), so both see the same
machine state; up to 10,000 calls each (fewer for big bodies: about 200 MB of input per contender);
per call times in µs, median and p99, land in each test's `extra_info` and in the table printed at
the end. `GROQPOLICY_BENCH_SHORT=1` runs a tenth of the blocks.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

import msgspec
import pytest

from bridge.kernel.untrusted import json_depth_exceeds

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
PER_BLOCK, MAX_BLOCKS, BYTES_PER_CONTENDER = 50, 200, 200_000_000
SCALE = 10 if SHORT else 1
_CONTEXT = {"principal": {"id": "svc-notes", "roles": ["reader"]}, "amount": 42, "text": "call Ann on 555-1234",
            "resource": {"kind": "document", "tags": ["a", "b"]}}
_ENVELOPE = {"policy_types": ["risk_management"], "performance_tier": "nano", "constitutional_hash": "cdd01ef066bc6cf2"}
BODIES = {
    "evaluate (one context)": json.dumps({"input_context": _CONTEXT, **_ENVELOPE}).encode(),
    "batch (100 contexts)": json.dumps({"contexts": [_CONTEXT] * 100, **_ENVELOPE}).encode(),
    "batch (1 MB)": json.dumps({"contexts": [_CONTEXT] * 5600, **_ENVELOPE}).encode(),
    "hostile (5,000 levels)": b"[" * 5000 + b"]" * 5000,
}
RESULTS: dict[tuple[str, str], dict[str, float]] = {}


def _decode(body: bytes) -> object:
    try:
        return msgspec.json.decode(body)
    except RecursionError:  # the hostile body: what the check spares the decoders
        return None


CONTENDERS: dict[str, Callable[[bytes], object]] = {"depth_check": json_depth_exceeds, "msgspec_decode": _decode}


def _interleaved(body: bytes) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    blocks = max(2, min(MAX_BLOCKS, BYTES_PER_CONTENDER // (len(body) * PER_BLOCK)) // SCALE)
    for _ in range(blocks):
        for name, fn in CONTENDERS.items():
            for _ in range(PER_BLOCK):
                t0 = time.perf_counter_ns()
                fn(body)
                times[name].append((time.perf_counter_ns() - t0) / 1000)
    return times


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": round(statistics.median(ordered), 2), "p99_us": round(ordered[int(len(ordered) * 0.99)], 2)}


@pytest.mark.parametrize("label", list(BODIES))
def test_depth_check_beside_decode(benchmark, label):
    body = BODIES[label]
    assert json_depth_exceeds(body) is label.startswith("hostile")
    times: dict[str, list[float]] = {}
    benchmark.pedantic(lambda: times.update(_interleaved(body)), rounds=1, iterations=1)
    for name, samples in times.items():
        RESULTS[(label, name)] = _stats(samples)
    benchmark.extra_info.update({f"{name}_{k}": v for name in times for k, v in RESULTS[(label, name)].items()})
    benchmark.extra_info["body_bytes"] = len(body)


def teardown_module() -> None:
    if not RESULTS:
        return
    print("\n| body | bytes | depth check median / p99 µs | msgspec decode median / p99 µs |")
    print("| --- | ---: | ---: | ---: |")
    for label, body in BODIES.items():
        check, decode = RESULTS.get((label, "depth_check")), RESULTS.get((label, "msgspec_decode"))
        if check and decode:
            print(f"| {label} | {len(body)} | {check['median_us']} / {check['p99_us']} | "
                  f"{decode['median_us']} / {decode['p99_us']} |")
