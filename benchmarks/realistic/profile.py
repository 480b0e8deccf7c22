"""Where groqpolicy's time goes on the realistic classes: host builtin calls against the rest.

    .venv/bin/python -m benchmarks.realistic.profile [--evals 300]

For each class (the work dirs `benchmarks/test_realistic.py` prepares), the evaluator runs with a
timer around each host call (`WasmPolicy._dispatch`: reading the arguments out of guest memory, the
Python builtin, writing the result back) and around the Python builtin alone. What remains of an
evaluation is the guest's own work (compiled Rego and OPA's wasm library, `glob.match` and the
comprehensions included), moving input and result across, and the ctypes trampolines into the
host calls. The timers cost ~0.3 µs per host call, so "host" reads slightly high.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from typing import Any

from benchmarks.realistic.contender import _product_wasm
from benchmarks.test_realistic import CLASSES, _prepare
from bridge.opawasm import LoadOptions, WasmPolicy, hostfast
from controlplane.infra.toolchain import opa_binary


class _Profiled(WasmPolicy):
    def __init__(self, *args: Any, **kw: Any) -> None:
        self.host_ns = 0
        self.calls: dict[str, list[int]] = defaultdict(list)  # name -> ns in the builtin, per call
        self.dispatch: list[int] = []  # ns per host call, in all
        super().__init__(*args, **kw)
        for i, (name, fn) in list(self._table.items()):
            self._table[i] = (name, self._timed(name, fn))

    def _timed(self, name: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return fn(*args)
            finally:
                self.calls[name].append(time.perf_counter_ns() - t0)
        return call

    def _dispatch(self, inst: Any, builtin_id: int, arg_addrs: tuple[int, ...]) -> int:
        t0 = time.perf_counter_ns()
        try:
            return super()._dispatch(inst, builtin_id, arg_addrs)
        finally:
            took = time.perf_counter_ns() - t0
            self.host_ns += took
            self.dispatch.append(took)


def _answered_in_c(policy: WasmPolicy) -> int:
    return sum(hostfast.counts(inst.fast)[0] for inst in policy.pool._idle if inst.fast is not None)


def profile(name: str, evals: int) -> str:
    work, expected = _prepare(name, CLASSES[name])
    ep, inp = CLASSES[name]["query"].replace(".", "/"), CLASSES[name]["input"]
    os.environ.setdefault("OPA_BIN", str(opa_binary()))
    wasm, _ = _product_wasm(work, ep)  # as the control plane builds it: pattern builtins on the host
    policy = _Profiled(wasm, (work / "policy" / "data.json").read_bytes(), LoadOptions(pool_size=1))
    assert policy.evaluate(ep, inp) == expected
    for _ in range(50):
        policy.evaluate(ep, inp)
    policy.calls.clear()
    policy.dispatch.clear()
    warm = _answered_in_c(policy)
    times, host = [], []
    for _ in range(evals):
        policy.host_ns = 0
        t0 = time.perf_counter_ns()
        policy.evaluate(ep, inp)
        times.append(time.perf_counter_ns() - t0)
        host.append(policy.host_ns)
    med, host_med = statistics.median(times) / 1e3, statistics.median(host) / 1e3
    lines = [f"{name}: median {med:.1f} µs per evaluation; host calls {host_med:.1f} µs of it (median; {100 * host_med / med:.0f}%), "
             f"the rest (guest, input/result, trampolines) ~{med - host_med:.1f} µs"]
    for bname, per_call in sorted(policy.calls.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"    {bname:<24} {len(per_call) / evals:>6.1f} calls/eval  {statistics.median(per_call) / 1e3:>7.1f} µs median "
                     "per call in the Python builtin")
    native = _answered_in_c(policy) - warm
    if native:
        lines.append(f"    glob.match answered in C (hostfast) {native / evals:>4.1f} calls/eval, not in the host calls above")
    if policy.dispatch:
        all_calls = statistics.median(policy.dispatch) / 1e3
        builtin = statistics.median([ns for per_call in policy.calls.values() for ns in per_call]) / 1e3
        lines.append(f"    per host call (median): {all_calls:.1f} µs in all, {builtin:.1f} µs in the builtin, "
                     f"~{all_calls - builtin:.1f} µs reading arguments and writing the result")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--class", dest="only", default="", help="one class only (e.g. api_authz)")
    args = parser.parse_args()
    for name in [args.only] if args.only else CLASSES:
        print(profile(name, args.evals), flush=True)


if __name__ == "__main__":
    main()
