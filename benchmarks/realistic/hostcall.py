"""What a host builtin call costs beyond the builtin itself, per builtin class.

    .venv/bin/python -m benchmarks.realistic.hostcall [--rounds 5] [--against /path/to/other/checkout]

Per class, one entrypoint calls the builtin once for each of `N` input items in a comprehension,
and a base entrypoint builds the same arguments per item into an array, without the call. The
overhead of one host call is `(eval(calls) - eval(base)) / N - builtin`, where `builtin` is the Python builtin called
directly with the same arguments in the same process (`REGISTRY[name](ctx, *args)`). It is
everything the call costs that the builtin itself does not: the trampoline from the guest into
Python, the dispatch, reading the arguments out of linear memory, writing the result back, and the
difference between appending the result and appending the argument array. The entrypoints and
the direct calls run interleaved in blocks; each figure is the lowest of the blocks' medians (the
block least disturbed by the other processes on the machine), then the median over rounds.

`--against`: also run the same measurement on another checkout (its own `bridge` package, in a
child process per round), rounds alternating, so both sides see the same machine load.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

N = 40
SECRET = "s3cret"

# class -> (builtin, its arguments as Rego over item `x`, the same arguments in Python)
CLASSES: dict[str, tuple[str, str, Any]] = {
    "sprintf": ("sprintf", '"container %s uses image %q (%d)", [x.s, x.img, x.n]',
                lambda x: ["container %s uses image %q (%d)", [x["s"], x["img"], x["n"]]]),
    "jwt": ("io.jwt.decode_verify", 'x.tok, {"secret": "s3cret"}', lambda x: [x["tok"], {"secret": SECRET}]),
    "regex": ("regex.replace", 'x.img, "[0-9]+", "#"', lambda x: [x["img"], "[0-9]+", "#"]),
    "time": ("time.parse_rfc3339_ns", "x.ts", lambda x: [x["ts"]]),
    "crypto": ("crypto.sha256", "x.s", lambda x: [x["s"]]),
}
# per class: `c_<class>` calls the builtin once per item; `b_<class>` builds the same arguments
# per item without the call, so the difference is the call alone
REGO = "package hc\n" + "".join(
    f"c_{name} := [{b}({args}) | some x in input.xs]\nb_{name} := [[{args}] | some x in input.xs]\n"
    for name, (b, args, _) in CLASSES.items()
)
ENTRYPOINTS = [f"hc/{p}_{name}" for name in CLASSES for p in "cb"]


def _token(sub: str) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": sub, "iss": "groqpolicy", "scope": ["read", "write"]}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def make_input() -> dict[str, Any]:
    tok = _token("alice")  # one token, as a service checks every request against the same key
    return {"xs": [{"s": f"app-{i}", "img": f"registry.example.com/team{i}/app:1.{i}.0", "n": i,
                    "ts": f"2026-12-0{1 + i % 9}T10:{i % 60:02d}:00Z", "tok": tok} for i in range(N)]}


def build_wasm(opa: str, work: Path) -> bytes:
    """`opa build -t wasm` of the classes' policy (one entrypoint per class and the base)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "hc.rego").write_text(REGO)
    cmd = [opa, "build", "-t", "wasm", "-o", str(work / "b.tar.gz")]
    for e in ENTRYPOINTS:
        cmd += ["-e", e]
    subprocess.run([*cmd, str(work / "hc.rego")], check=True, capture_output=True)
    subprocess.run(["tar", "-xzf", "b.tar.gz", "/policy.wasm"], cwd=work, check=True, capture_output=True)
    return (work / "policy.wasm").read_bytes()


def measure(wasm: bytes, evals: int, blocks: int) -> dict[str, dict[str, float]]:
    """Per class: whole-evaluation median, the builtin's own median, and the overhead per call (µs)."""
    from bridge.opawasm import WasmPolicy
    from bridge.opawasm.builtins import REGISTRY, EvalContext
    from bridge.opawasm.host import HostConfig

    policy = WasmPolicy(wasm, pool_size=1)
    inp = make_input()
    times: dict[str, list[float]] = {k: [] for k in ENTRYPOINTS}  # per block: the block's median
    direct: dict[str, list[float]] = {k: [] for k in CLASSES}
    host = HostConfig()
    for _ in range(blocks):
        for ep, block_medians in times.items():
            for _ in range(3):
                policy.evaluate(ep, inp)
            ts = []
            for _ in range(evals):
                t0 = time.perf_counter_ns()
                policy.evaluate(ep, inp)
                ts.append(time.perf_counter_ns() - t0)
            block_medians.append(statistics.median(ts))
        for name, (bname, _, args_of) in CLASSES.items():
            fn, argsets, ts = REGISTRY[bname], [args_of(x) for x in inp["xs"]], []
            for _ in range(evals):
                ctx = EvalContext(time.time_ns(), time.monotonic() + 5, host)
                t0 = time.perf_counter_ns()
                for a in argsets:
                    fn(ctx, *a)
                ts.append(time.perf_counter_ns() - t0)
            direct[name].append(statistics.median(ts))
    out = {}
    for name in CLASSES:
        ev, base = (min(times[f"hc/{p}_{name}"]) / 1e3 for p in "cb")
        own = min(direct[name]) / 1e3 / N
        out[name] = {"eval_us": ev, "base_us": base, "builtin_us": own, "overhead_us": (ev - base) / N - own}
    return out


_CHILD = """
import json, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
import bridge
assert bridge.__file__.startswith(sys.argv[1]), bridge.__file__
import importlib.util
spec = importlib.util.spec_from_file_location("hostcall_bench", sys.argv[5])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print(json.dumps(mod.measure(open(sys.argv[2], "rb").read(), int(sys.argv[3]), int(sys.argv[4]))))
"""


def _run(checkout: Path, wasm_path: Path, evals: int, blocks: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(checkout), str(wasm_path), str(evals), str(blocks),
                           str(Path(__file__).resolve())],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--against", type=Path, help="another checkout, measured in alternating rounds")
    parser.add_argument("--opa", default=None)
    args = parser.parse_args()
    from controlplane.infra.toolchain import opa_binary

    work = Path("/tmp") / "groqpolicy-bench" / "hostcall"
    build_wasm(args.opa or str(opa_binary()), work)
    sides = {"this": Path(__file__).resolve().parents[2]}
    if args.against:
        sides["against"] = args.against.resolve()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for side, path in (sides.items() if r % 2 == 0 else reversed(sides.items())):
            runs[side].append(_run(path, work / "policy.wasm", args.evals, args.blocks))
    print(f"N={N} calls per evaluation, {args.rounds} rounds; medians over rounds, µs")
    print(f"{'class':<8} " + "  ".join(f"{s + ' eval':>14} {s + ' builtin':>16} {s + ' overhead':>17}" for s in sides))
    for name in CLASSES:
        cols = []
        for side in sides:
            med = {k: statistics.median(r[name][k] for r in runs[side]) for k in ("eval_us", "builtin_us", "overhead_us")}
            cols.append(f"{med['eval_us']:>14.1f} {med['builtin_us']:>16.2f} {med['overhead_us']:>17.2f}")
        print(f"{name:<8} " + "  ".join(cols))


if __name__ == "__main__":
    main()
