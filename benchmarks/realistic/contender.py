"""One contender of the realistic-policy benchmark, alone in its own process (and maybe its own venv).

    python contender.py KIND WORKDIR

WORKDIR holds what `benchmarks/test_realistic.py` prepared: `policy/` (the Rego modules and
`data.json`), `input.json`, `policy.wasm` and `spec.json` ({"query": "bench.x.result"}). The
process loads the policy, evaluates it once and prints `{"ok": true, "result": ..., "version": ...}`
(or `{"ok": false, "error": ...}`) as one JSON line. Then, for every line `{"n": N, "budget_s": T}`
on stdin, it evaluates up to N times (stopping early after T seconds) and prints the list of
per-evaluation times in nanoseconds. Every evaluation passes the input as a Python value and gets
the result back as one, as an application would.

This file imports nothing of the project at module level: the peers' venvs do not have it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any


def _modules(work: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((work / "policy").glob("*.rego"))}


def _groqpolicy(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    # the venv's editable install would win over PYTHONPATH for `groqpolicy-base`: drop its finder
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    import bridge
    from bridge.opawasm import LoadOptions, WasmPolicy

    print(f"groqpolicy from {Path(bridge.__file__).parent.parent}", file=sys.stderr, flush=True)

    ep = query.replace(".", "/")
    wasm, routed = _product_wasm(work, ep)
    # the fuel-free lane as the control plane turns it on (an older checkout, the baseline, has none)
    lane = {"fuel_free_lane": True} if "fuel_free_lane" in LoadOptions.__dataclass_fields__ else {}
    policy = WasmPolicy(wasm, (work / "policy" / "data.json").read_bytes(), LoadOptions(pool_size=1, **lane))
    if getattr(policy, "lane", None) is not None:  # compiled on first demand, in the background:
        policy.lane.start()  # time the lane, not the fuel lane it falls back on meanwhile
        policy.lane.ready.wait(300)
    return (lambda: policy.evaluate(ep, inp)), "wasmtime " + metadata.version("wasmtime") + routed


def _product_wasm(work: Path, entrypoint: str) -> tuple[bytes, str]:
    """policy.wasm as the control plane builds it from this checkout: with the pattern builtins
    routed to the host where the checkout has that (`controlplane.bundles.wasmsource`); a checkout
    without it (`groqpolicy-base` on an older main) runs the plain `opa build` policy.wasm."""
    try:
        from controlplane.bundles import wasmsource
    except ImportError:
        return (work / "policy.wasm").read_bytes(), ""
    import tarfile
    import tempfile

    opa = os.environ["OPA_BIN"]
    with tempfile.TemporaryDirectory(prefix="groqpolicy-bench-") as tmp:
        sources, cwd = wasmsource.routed_tree([work / "policy"], work, Path(tmp) / "src")
        caps = Path(tmp) / "caps.json"
        caps.write_bytes(wasmsource.capabilities(subprocess.run([opa, "capabilities", "--current"], capture_output=True,
                                                                text=True, check=True).stdout))
        out = Path(tmp) / "bundle.tar.gz"
        subprocess.run([opa, "build", "-t", "wasm", "-e", entrypoint, "--capabilities", str(caps), "-o", str(out),
                        *[str(s) for s in sources]], check=True, capture_output=True, cwd=cwd)
        with tarfile.open(out) as tar:
            member = next(m for m in tar if m.name.lstrip("/") == "policy.wasm")
            return tar.extractfile(member).read(), " (pattern builtins on the host)"  # type: ignore[union-attr]


def _regorus(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    import regorus

    engine = regorus.Engine()
    for name, src in _modules(work).items():
        engine.add_policy(name, src)
    engine.add_data_json((work / "policy" / "data.json").read_text())
    rule = "data." + query

    def once() -> Any:
        engine.set_input(inp)
        return engine.eval_rule(rule)

    return once, "gordon-to-regorus " + metadata.version("gordon-to-regorus")


def _opa_golib(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    from opa_bindings import OpaEngine

    engine = OpaEngine()
    for name, src in _modules(work).items():
        engine.add_policy(name, src)
    engine.add_data(json.loads((work / "policy" / "data.json").read_text()))
    return (lambda: engine.eval_document(query, inp)), "opa-golib-python-bindings " + metadata.version("opa-golib-python-bindings")


def _opa_py_wasm(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    from opapywasm import OpaWasmPolicy

    policy = OpaWasmPolicy.from_wasm_bytes((work / "policy.wasm").read_bytes())
    missing = sorted(b for b in policy.builtins if b not in ("sprintf", "json.is_valid", "yaml.marshal", "yaml.unmarshal", "yaml.is_valid"))
    if missing:
        # the SDK ships no implementation of these; a stand-in would measure our shortcut, not the peer
        raise RuntimeError(f"opa-py-wasm has no host implementation of {', '.join(missing)}")
    policy.set_data(json.loads((work / "policy" / "data.json").read_text()))
    ep = query.replace(".", "/")
    return (lambda: policy.evaluate(inp, ep)), "opa-py-wasm " + metadata.version("opa-py-wasm")


def _regopy(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    import regopy

    build = regopy.Interpreter()
    build.add_data_json((work / "policy" / "data.json").read_text())
    for name, src in _modules(work).items():
        build.add_module(name, src)
    ep = query.replace(".", "/")
    bundle = build.build(None, [ep])
    run = regopy.Interpreter()

    def once() -> Any:
        run.set_input(regopy.Input(inp))
        out = run.query_bundle_entrypoint(bundle, ep)
        if not out.ok():
            raise RuntimeError(str(out))
        return json.loads(str(out))["expressions"][0]

    return once, "regopy " + metadata.version("regopy")


def _opa_rest(work: Path, query: str, inp: Any) -> tuple[Callable[[], Any], str]:
    """A real `opa run --server` (its own process, error-level logs) over one keep-alive connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opa = os.environ["OPA_BIN"]
    proc = subprocess.Popen([opa, "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error",
                             "--skip-version-check", str(work / "policy")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _CHILDREN.append(proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/health")
            if conn.getresponse().read() is not None:
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("opa run --server did not start") from None
            time.sleep(0.05)
    path = "/v1/data/" + query.replace(".", "/")
    headers = {"content-type": "application/json"}

    def once() -> Any:
        conn.request("POST", path, json.dumps({"input": inp}), headers)
        return json.loads(conn.getresponse().read())["result"]

    version = subprocess.run([opa, "version"], capture_output=True, text=True).stdout.splitlines()[0]
    return once, "opa " + version.split(":", 1)[1].strip()


_CHILDREN: list[subprocess.Popen] = []
KINDS: dict[str, Callable[[Path, str, Any], tuple[Callable[[], Any], str]]] = {
    "groqpolicy": _groqpolicy, "groqpolicy-base": _groqpolicy, "regorus": _regorus, "opa-golib": _opa_golib, "opa-py-wasm": _opa_py_wasm,
    "regopy": _regopy, "opa-rest": _opa_rest,
}


def _serve(fn: Callable[[], Any]) -> None:
    clock = time.perf_counter_ns
    for line in sys.stdin:
        order = json.loads(line)
        n, stop = order["n"], clock() + int(order["budget_s"] * 1e9)
        times = []
        while len(times) < n:
            t0 = clock()
            fn()
            t1 = clock()
            times.append(t1 - t0)
            if t1 > stop:
                break
        print(json.dumps(times), flush=True)


def main() -> None:
    kind, work = sys.argv[1], Path(sys.argv[2])
    spec = json.loads((work / "spec.json").read_text())
    inp = json.loads((work / "input.json").read_text())
    try:
        fn, version = KINDS[kind](work, spec["query"], inp)
        result = fn()
    except Exception as exc:  # noqa: BLE001 - the harness reports the peer as skipped, with this reason
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}), flush=True)
        return
    print(json.dumps({"ok": True, "result": result, "version": version}), flush=True)
    try:
        _serve(fn)
    finally:
        for child in _CHILDREN:
            child.terminate()


if __name__ == "__main__":
    main()
