"""Realistic policy classes (admission control, API authorization, a large-`data` filter, this
project's own library), every contender in its own process, side by side in interleaved blocks,
every contender's answer checked against `opa eval` of the same modules, data and input.

    groqpolicy   bridge.opawasm.WasmPolicy on the `opa build -t wasm` policy.wasm (project venv)
    regorus      gordon-to-regorus, Rust Rego interpreter (its own venv)
    opa-golib    opa-golib-python-bindings: OPA's Go engine in-process through ctypes (its own venv)
    opa-py-wasm  the PyPI OPA-WASM SDK on the same policy.wasm (its own venv: it pins wasmtime < 47)
    regopy       rego-cpp's binding, on a bundle it builds (project venv)
    opa-rest     `opa run --server` v1.22.3, one keep-alive connection from the standard library

The peers' venvs are built by `benchmarks/realistic/peers.py` on first use; a peer that cannot be
installed, cannot load a class or answers differently from `opa eval` is reported, not timed, and
never fails the run. groqpolicy answering differently fails it. `GROQPOLICY_BENCH_SHORT=1`: three
blocks of at most 0.2 s per contender. See benchmarks/README.md (issue 18).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import interleaved, stats
from benchmarks.realistic.peers import CACHE, Contender
from benchmarks.realistic.policies import classes
from controlplane.infra.toolchain import opa_binary

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 3 if SHORT else 10
PER_BLOCK = 400 if SHORT else 3000  # evaluations per contender per block, at most ...
BUDGET_S = 0.2 if SHORT else 1.0  # ... and no longer than this
CONTENDERS = ["groqpolicy", "regorus", "opa-golib", "opa-py-wasm", "regopy", "opa-rest"]
if os.environ.get("GROQPOLICY_BENCH_BASELINE"):  # another checkout's evaluator, side by side (before/after)
    CONTENDERS.insert(1, "groqpolicy-base")
CLASSES = classes()
RESULTS: dict[str, dict[str, Any]] = {}


def _prepare(name: str, spec: dict[str, Any]) -> tuple[Path, Any]:
    """The class's work dir (modules, data, input, policy.wasm) and `opa eval`'s answer, cached by content."""
    opa = opa_binary()
    blob = json.dumps([spec["modules"], spec["data"], spec["input"], spec["query"]], sort_keys=True).encode()
    work = CACHE / "realistic" / f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}"
    if not (work / "expected.json").exists():
        (work / "policy").mkdir(parents=True, exist_ok=True)
        for fname, src in spec["modules"].items():
            (work / "policy" / fname).write_text(src)
        (work / "policy" / "data.json").write_text(json.dumps(spec["data"]))
        (work / "input.json").write_text(json.dumps(spec["input"]))
        (work / "spec.json").write_text(json.dumps({"query": spec["query"]}))
        subprocess.run([str(opa), "build", "-t", "wasm", "-e", spec["query"].replace(".", "/"), "-o", str(work / "bundle.tar.gz"),
                        str(work / "policy")], check=True, capture_output=True)
        with tarfile.open(work / "bundle.tar.gz") as tar:
            member = next(m for m in tar if m.name.lstrip("/") == "policy.wasm")
            (work / "policy.wasm").write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
        out = subprocess.run([str(opa), "eval", "--format", "json", "-d", str(work / "policy"), "-i", str(work / "input.json"),
                              "data." + spec["query"]], check=True, capture_output=True, text=True)
        value = json.loads(out.stdout)["result"][0]["expressions"][0]["value"]
        (work / "expected.json").write_text(json.dumps(value))
    return work, json.loads((work / "expected.json").read_text())


@pytest.mark.parametrize("klass", list(CLASSES))
def test_realistic(benchmark, klass: str) -> None:
    work, expected = _prepare(klass, CLASSES[klass])
    contenders = {kind: Contender(kind) for kind in CONTENDERS}
    try:
        for c in contenders.values():
            c.start(work, opa_binary())
            if not c.error and c.result != expected:
                c.error = f"answer differs from opa eval: {json.dumps(c.result)[:200]}"
                c.stop()
        assert not contenders["groqpolicy"].error, contenders["groqpolicy"].error
        timed = {kind: c.run for kind, c in contenders.items() if not c.error}
        times: dict[str, list[float]] = {}
        benchmark.pedantic(lambda: times.update(interleaved(timed, BLOCKS, PER_BLOCK, BUDGET_S)), rounds=1, iterations=1)
    finally:
        for c in contenders.values():
            c.stop()
    row: dict[str, Any] = {}
    for kind, c in contenders.items():
        row[kind] = {"skipped": c.error} if c.error else {**stats(times[kind]), "version": c.version}
    RESULTS[klass] = row
    benchmark.extra_info.update(row)


def _table() -> str:
    lines = ["", f"load average (1, 5, 15 min): {os.getloadavg()}", f"{'class':<12} {'contender':<12} {'median us':>10} {'p99 us':>10} {'n':>6}  x groqpolicy"]
    for klass, row in RESULTS.items():
        base = row["groqpolicy"].get("median_us")
        peers = [r["median_us"] for k, r in row.items() if not k.startswith("groqpolicy") and "median_us" in r]
        for kind, r in sorted(row.items(), key=lambda kv: kv[1].get("median_us", float("inf"))):
            if "skipped" in r:
                lines.append(f"{klass:<12} {kind:<12} skipped: {r['skipped'][:150]}")
                continue
            lines.append(f"{klass:<12} {kind:<12} {r['median_us']:>10.1f} {r['p99_us']:>10.1f} {r['n']:>6}  {r['median_us'] / base:.2f}x")
        if peers:
            lines.append(f"{klass:<12} groqpolicy / best peer: {base / min(peers):.2f}x")
        if "median_us" in row.get("groqpolicy-base", {}):
            lines.append(f"{klass:<12} groqpolicy-base / best peer: {row['groqpolicy-base']['median_us'] / min(peers):.2f}x")
    return "\n".join(lines)


@pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")
def test_realistic_summary(benchmark, capsys) -> None:
    """Print the table (run last in the module); `GROQPOLICY_BENCH_JSON=path` also writes it as JSON."""
    if not RESULTS:
        pytest.skip("no results (run with --benchmark-only)")
    with capsys.disabled():
        print(_table())
    if out := os.environ.get("GROQPOLICY_BENCH_JSON"):
        Path(out).with_suffix(".realistic.json").write_text(json.dumps(RESULTS, indent=1))
