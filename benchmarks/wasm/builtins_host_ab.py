"""A/B of the host builtins alone, called directly as `_dispatch` calls them (no wasm, no fuel).

    .venv/bin/python benchmarks/wasm/builtins_host_ab.py --a /path/to/old/checkout --b . [--rounds 3]

The builtins and inputs of `builtins_ab.py`. Each run is a fresh process per checkout, alternating
A, B; per builtin the best of 40 repeats of a batch of calls, timed in the thread's CPU time
(`time.thread_time`), so that time the shared machine gives to other processes is not counted; the
summary is the best over the runs. This isolates what a builtin's own code costs from the wasm
side of an evaluation, which `builtins_ab.py` times as a whole.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from builtins_ab import INPUT, signed_inputs  # the sibling script (benchmarks/ is no package)

_RUN = """
import json, sys, time, timeit
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[1])
from bridge.opawasm.builtins import REGISTRY, EvalContext
from bridge.opawasm.host import HostConfig
assert __import__("bridge").__file__.startswith(sys.argv[1]), __import__("bridge").__file__
out = {}
for name, args, batch in json.loads(sys.argv[2]):
    fn = REGISTRY[name]
    def once():
        return fn(EvalContext(time.time_ns(), time.monotonic() + 5, HostConfig()), *args)
    once()
    out[name] = min(timeit.repeat(once, number=batch, repeat=40, timer=time.thread_time)) / batch * 1e6
print(json.dumps(out))
"""


def calls() -> list[tuple[str, list[object], int]]:
    i, s = INPUT, {k: v for d in signed_inputs().values() for k, v in d.items()}
    slow = 20  # calls per batch for the builtins that take ~100 µs and more
    return [
        ("regex.replace", [i["s"], "[0-9]+", "#"], 200),
        ("regex.split", [",\\s*", i["csv"]], 200),
        ("regex.find_n", ["[a-z]+", i["s"], -1], 200),
        ("regex.template_match", ["urn:foo:{.*}", "urn:foo:bar:baz", "{", "}"], 200),
        ("sprintf", ["%s:%d:%v", [i["user"], 42, i["f"]]], 200),
        ("uri.parse", [i["url"]], 200),
        ("uuid.parse", [i["uuid"]], 200),
        ("json.patch", [i["doc"], [{"op": "add", "path": "/b", "value": 2}]], 200),
        ("units.parse", [i["units"]], 200),
        ("units.parse_bytes", [i["bytes"]], 200),
        ("numbers.range_step", [1, 100, 3], 200),
        ("strings.render_template", ["{{.user}} has {{range $.items}}[{{.}}]{{end}}", i], 200),
        ("yaml.unmarshal", [i["yaml"]], slow),
        ("strings.any_prefix_match", [i["url"], ["https://", "http://"]], 200),
        ("io.jwt.decode", [i["jwt"]], 200),
        ("io.jwt.decode_verify", [s["jwt_rs"], {"cert": s["cert"], "time": 1700000000000000000}], slow),
        ("crypto.x509.parse_certificates", [s["cert"]], slow),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the baseline checkout")
    ap.add_argument("--b", type=Path, required=True, help="the checkout under test")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    plan = json.dumps(calls())
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for _ in range(args.rounds):
        for side, checkout in (("a", args.a), ("b", args.b)):
            out = subprocess.run([sys.executable, "-c", _RUN, str(checkout.resolve()), plan],
                                 capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'builtin':<32} {'A best us':>10} {'B best us':>10} {'B vs A':>8}")
    for name in runs["b"][0]:
        a = min(r[name] for r in runs["a"])
        b = min(r[name] for r in runs["b"])
        print(f"{name:<32} {a:>10.1f} {b:>10.1f} {100 * (b - a) / a:>+7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
