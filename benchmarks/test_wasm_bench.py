"""Evaluator benchmarks: per-evaluation latency of the same policies, data and inputs, side by side in
one pytest process:

- groqpolicy    this repo's in-process OPA-WASM evaluator (bridge.opawasm.WasmPolicy)
- opa-rest      a real `opa run --server` on localhost, POST /v1/data/<path> over a keep-alive client
- regopy        rego-cpp's Python binding, on a prepared (built) bundle
- opa-py-wasm   the PyPI OPA-WASM SDK (wasmtime-py's regular call path)

Every measurement is one evaluation per round (`pedantic(iterations=1)`), so the stats are
per-evaluation and p99 is meaningful. `GROQPOLICY_BENCH_SHORT=1` keeps the module well under a minute.
A summary table (median, p99, ratio to groqpolicy) is printed at the end of the module.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).parent / "wasm"))
from wasm_bench_common import POLICIES, IsolatedWasmtime, build, ensure_opa_py_wasm, peer_builtins

from bridge.opawasm import LoadOptions, WasmPolicy
from controlplane.infra.toolchain import opa_binary

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
ROUNDS = {"groqpolicy": 3000 if SHORT else 50000, "regopy": 2000 if SHORT else 20000,
          "opa-py-wasm": 300 if SHORT else 3000, "opa-rest": 500 if SHORT else 5000}
RESULTS: dict[tuple[str, str], dict[str, float]] = {}
CONTENDERS = ["groqpolicy", "opa-rest", "regopy", "opa-py-wasm"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def opa_server(tmp_path_factory):
    import subprocess

    d = tmp_path_factory.mktemp("opa-rest")
    for name, spec in POLICIES.items():
        (d / f"{name}.rego").write_text(spec["source"])
    data: dict[str, Any] = {}
    for spec in POLICIES.values():
        if spec["data"]:
            data.update(spec["data"])
    (d / "data.json").write_bytes(msgspec.json.encode(data))
    port = _free_port()
    proc = subprocess.Popen(
        [str(opa_binary()), "run", "--server", "--addr", f"127.0.0.1:{port}", "--log-level", "error", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"opa run --server did not become healthy: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    yield client
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def peer():
    try:
        return IsolatedWasmtime(ensure_opa_py_wasm())
    except Exception as exc:  # noqa: BLE001 - reported as a skip with its reason
        pytest.skip(f"opa-py-wasm unavailable: {type(exc).__name__}: {exc}")


def _groqpolicy(name: str) -> Callable[[], Any]:
    spec = POLICIES[name]
    wasm, data = build(name)
    p = WasmPolicy(wasm, data, LoadOptions(pool_size=1))
    ep, inp = spec["entrypoint"], spec["input"]
    assert p.evaluate(ep, inp) is True
    return lambda: p.evaluate(ep, inp)


def _opa_rest(name: str, client: httpx.Client) -> Callable[[], Any]:
    spec = POLICIES[name]
    path = "/v1/data/" + spec["entrypoint"]
    body = {"input": spec["input"]}
    assert client.post(path, json=body).json()["result"] is True
    return lambda: client.post(path, json=body).json()["result"]


def _regopy(name: str) -> Callable[[], Any]:
    try:
        import regopy
    except ImportError as exc:
        pytest.skip(f"regopy not installed: {exc}")
    spec = POLICIES[name]
    build_rego = regopy.Interpreter()
    if spec["data"]:
        build_rego.add_data_json(msgspec.json.encode(spec["data"]).decode())
    build_rego.add_module("p.rego", spec["source"])
    ep = spec["entrypoint"]
    try:
        bundle = build_rego.build(None, [ep])
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"regopy cannot build this policy: {exc}")
    run = regopy.Interpreter()
    inp = spec["input"]

    def once() -> Any:
        run.set_input(regopy.Input(inp))
        return run.query_bundle_entrypoint(bundle, ep)

    out = once()
    text = str(out)
    if not out.ok() or '"expressions":[true]' not in text.replace(" ", ""):
        pytest.skip(f"regopy gives a different answer for {name}: {text[:200]}")
    return once


def _opa_py_wasm(name: str, peer: IsolatedWasmtime) -> Callable[[], Any]:
    spec = POLICIES[name]
    wasm, _data = build(name)  # the peer loads its data from the spec (set_data)
    mod = peer.module
    try:
        p = peer.construct(mod.OpaWasmPolicy.from_wasm_bytes, wasm)
        for bname, bfn in peer_builtins().items():
            if bname in p.builtins:
                p.register_builtin(bname, bfn)
        if spec["data"]:
            with peer:
                p.set_data(spec["data"])
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"opa-py-wasm cannot load {name}: {type(exc).__name__}: {exc}")
    ep, inp = spec["entrypoint"], spec["input"]

    def once() -> Any:
        with peer:
            return p.evaluate(inp, ep)

    try:
        res = once()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"opa-py-wasm cannot evaluate {name}: {type(exc).__name__}: {exc}")
    if res is not True:
        pytest.skip(f"opa-py-wasm gives {res!r} for {name}")
    return once


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_wasm_eval(benchmark, policy: str, contender: str, request):
    if contender == "groqpolicy":
        fn = _groqpolicy(policy)
    elif contender == "opa-rest":
        fn = _opa_rest(policy, request.getfixturevalue("opa_server"))
    elif contender == "regopy":
        fn = _regopy(policy)
    else:
        fn = _opa_py_wasm(policy, request.getfixturevalue("peer"))
    benchmark.group = f"wasm-{policy}"
    benchmark.extra_info.update({"policy": policy, "contender": contender})
    rounds = ROUNDS[contender]
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=min(200, rounds // 10))
    data = sorted(benchmark.stats.stats.data)
    med = statistics.median(data)
    p99 = data[min(len(data) - 1, int(len(data) * 0.99))]
    benchmark.extra_info.update({"median_us": med * 1e6, "p99_us": p99 * 1e6})
    RESULTS[(policy, contender)] = {"median_us": med * 1e6, "p99_us": p99 * 1e6, "rounds": len(data)}


@pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")
def test_wasm_summary(request, benchmark, capsys):
    """Print median/p99 and the ratio of each peer to groqpolicy (run last in this module)."""
    if not RESULTS:
        pytest.skip("no benchmark results (run with --benchmark-only or without --benchmark-skip)")
    lines = ["", f"{'policy':<10} {'contender':<12} {'median us':>10} {'p99 us':>10} {'x groqpolicy':>13}"]
    for policy in POLICIES:
        base = RESULTS.get((policy, "groqpolicy"))
        for c in CONTENDERS:
            r = RESULTS.get((policy, c))
            if r is None:
                lines.append(f"{policy:<10} {c:<12} {'skipped':>10}")
                continue
            ratio = f"{r['median_us'] / base['median_us']:.1f}x" if base else "-"
            lines.append(f"{policy:<10} {c:<12} {r['median_us']:>10.1f} {r['p99_us']:>10.1f} {ratio:>13}")
    text = "\n".join(lines)
    with capsys.disabled():
        print(text)
    out = os.environ.get("GROQPOLICY_BENCH_JSON")
    if out:
        Path(out).write_bytes(msgspec.json.encode({f"{p}/{c}": v for (p, c), v in RESULTS.items()}))
