"""Evaluator benchmarks: per-evaluation latency of the same policies, data and inputs, side by side in
one pytest process:

- groqpolicy    this repo's in-process OPA-WASM evaluator (bridge.opawasm.WasmPolicy)
- opa-rest      a real `opa run --server` on localhost, POST /v1/data/<path> over a keep-alive client
- regopy        rego-cpp's Python binding, on a prepared (built) bundle
- opa-py-wasm   the PyPI OPA-WASM SDK (wasmtime-py's regular call path)

Every timed call is one evaluation, so the stats are per evaluation and the p99 is real. The
contenders take turns in interleaved blocks (`benchmarks.harness.interleaved`), so the machine's
drift reaches all of them alike. `GROQPOLICY_BENCH_SHORT=1` keeps the module well under a minute.
A summary table (median, p99, ratio to groqpolicy) is printed at the end of the module.
"""

from __future__ import annotations

import os
import socket
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

from benchmarks.harness import interleaved, local_runner, stats
from bridge.opawasm import LoadOptions, WasmPolicy
from controlplane.infra.toolchain import opa_binary

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 3 if SHORT else 10
PER_BLOCK = 20_000  # evaluations per contender per block, at most ...
BUDGET_S = 0.15 if SHORT else 1.0  # ... and no longer than this
WARMUP = 200  # unrecorded evaluations per contender before the first block
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


class Unavailable(Exception):
    """A peer that cannot run a policy: reported with the reason, not timed."""


@pytest.fixture(scope="module")
def peer() -> IsolatedWasmtime | str:
    try:
        return IsolatedWasmtime(ensure_opa_py_wasm())
    except Exception as exc:  # noqa: BLE001 - reported as skipped with its reason
        return f"opa-py-wasm unavailable: {type(exc).__name__}: {exc}"


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
        raise Unavailable(f"regopy not installed: {exc}") from exc
    spec = POLICIES[name]
    build_rego = regopy.Interpreter()
    if spec["data"]:
        build_rego.add_data_json(msgspec.json.encode(spec["data"]).decode())
    build_rego.add_module("p.rego", spec["source"])
    ep = spec["entrypoint"]
    try:
        bundle = build_rego.build(None, [ep])
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"regopy cannot build this policy: {exc}") from exc
    run = regopy.Interpreter()
    inp = spec["input"]

    def once() -> Any:
        run.set_input(regopy.Input(inp))
        return run.query_bundle_entrypoint(bundle, ep)

    out = once()
    text = str(out)
    if not out.ok() or '"expressions":[true]' not in text.replace(" ", ""):
        raise Unavailable(f"regopy gives a different answer for {name}: {text[:200]}")
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
        raise Unavailable(f"opa-py-wasm cannot load {name}: {type(exc).__name__}: {exc}") from exc
    ep, inp = spec["entrypoint"], spec["input"]

    def once() -> Any:
        with peer:
            return p.evaluate(inp, ep)

    try:
        res = once()
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(f"opa-py-wasm cannot evaluate {name}: {type(exc).__name__}: {exc}") from exc
    if res is not True:
        raise Unavailable(f"opa-py-wasm gives {res!r} for {name}")
    return once


def _contender(policy: str, contender: str, opa_server: httpx.Client, peer: IsolatedWasmtime | str) -> Callable[[], Any]:
    if contender == "groqpolicy":
        return _groqpolicy(policy)
    if contender == "opa-rest":
        return _opa_rest(policy, opa_server)
    if contender == "regopy":
        return _regopy(policy)
    if isinstance(peer, str):
        raise Unavailable(peer)
    return _opa_py_wasm(policy, peer)


@pytest.mark.parametrize("policy", list(POLICIES))
def test_wasm_eval(benchmark, policy: str, opa_server, peer):
    """All contenders on one policy, in `BLOCKS` interleaved blocks of `BUDGET_S` each (the order
    rotates every block), one evaluation per timed call."""
    runners, skipped = {}, {}
    for contender in CONTENDERS:
        try:
            fn = _contender(policy, contender, opa_server, peer)
        except Unavailable as exc:
            skipped[contender] = str(exc)
            continue
        for _ in range(WARMUP):
            fn()
        runners[contender] = local_runner(fn)
    times: dict[str, list[float]] = {}
    benchmark.group = f"wasm-{policy}"
    benchmark.pedantic(lambda: times.update(interleaved(runners, BLOCKS, PER_BLOCK, BUDGET_S)), rounds=1, iterations=1)
    for contender, data in times.items():
        RESULTS[(policy, contender)] = row = stats(data)
        benchmark.extra_info[contender] = row
    benchmark.extra_info["skipped"] = skipped


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
