"""What fuel counting costs each realistic class: the evaluator with the engine's `consume_fuel`
on (as shipped) against the same code with it off, in alternating child processes.

    .venv/bin/python -m benchmarks.realistic.fuel [--rounds 6] [--evals 200]

A diagnostic, not a configuration: with fuel off the inline budget (`INLINE_FUEL`) cannot be
enforced, so the off arm only ever evaluates outside it (as the benchmark's contender does).
Each round runs both arms once, in alternating order; per arm and class, the median of the
rounds' medians. The work dirs are those `benchmarks/test_realistic.py` prepares.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_CHILD = """
import json, statistics, sys, time
if sys.argv[1] == "off":
    import wasmtime
    _set = wasmtime.Config.consume_fuel.fset
    wasmtime.Config.consume_fuel = property(fset=lambda self, _v: _set(self, False))
from benchmarks.realistic.profile import CLASSES, _prepare
from bridge.opawasm import LoadOptions, WasmPolicy
out = {}
for name, spec in CLASSES.items():
    work, expected = _prepare(name, spec)
    p = WasmPolicy((work / "policy.wasm").read_bytes(), (work / "policy" / "data.json").read_bytes(), LoadOptions(pool_size=1))
    ep = spec["query"].replace(".", "/")
    assert p.evaluate(ep, spec["input"]) == expected, name
    n = max(20, int(sys.argv[2]) // (50 if name == "data_filter" else 1))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns(); p.evaluate(ep, spec["input"]); ts.append(time.perf_counter_ns() - t0)
    out[name] = statistics.median(ts) / 1e3
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--evals", type=int, default=2000)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for r in range(args.rounds):
        for arm in ("on", "off") if r % 2 == 0 else ("off", "on"):
            proc = subprocess.run([sys.executable, "-c", _CHILD, arm, str(args.evals)], check=True, capture_output=True, text=True)
            runs[arm].append(json.loads(proc.stdout))
    print(f"{'class':<12} {'fuel on µs':>12} {'fuel off µs':>12} {'off / on':>9}")
    for name in runs["on"][0]:
        on, off = (statistics.median(r[name] for r in runs[a]) for a in ("on", "off"))
        print(f"{name:<12} {on:>12.1f} {off:>12.1f} {off / on:>8.2f}x")


if __name__ == "__main__":
    main()
