"""Differential corpus: every case is evaluated by the wasm evaluator and by real `opa eval`
(topdown); results must be identical (value, or undefined, or both an error).

The corpus is data: `tests/wasm_corpus/*.yaml`, one Rego module per file with its cases. To keep
this fast, each module is compiled to wasm once (cached by content) and topdown evaluates all of
a module's non-error cases in a single `opa eval` run through a generated driver module.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from bridge.opawasm import UNDEFINED, HostConfig, policy_from_files
from bridge.opawasm import errors as wasm_errors
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_one

CORPUS = Path(__file__).parent / "wasm_corpus"
RUNTIME = {"env": {"CORPUS": "yes"}, "version": "1.22.3"}


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    pkg = doc["module"].split("package", 1)[1].split()[0]
    doc["package"] = pkg
    doc["cases"] = [
        {"rule": c["rule"], "input": inp, "error": bool(c.get("error", False)), "id": f"{path.stem}:{c['rule']}#{i}"}
        for c in doc["cases"]
        for i, inp in enumerate(c.get("inputs", [{}]))
    ]
    return doc


MODULES = sorted(CORPUS.glob("*.yaml"))


def _norm(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def _topdown_batch(doc: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    import subprocess

    from controlplane.infra.toolchain import opa_binary

    with tempfile.TemporaryDirectory() as td:
        src = Path(td)
        (src / "m.rego").write_text(doc["module"])
        data = dict(doc.get("data") or {})
        data["__diff_inputs"] = [c["input"] for c in cases]
        (src / "data.json").write_bytes(msgspec.json.encode(data))
        lines = ["package __diff", "import rego.v1"]
        for i, c in enumerate(cases):
            lines.append(f"r{i} := [v | v := data.{doc['package']}.{c['rule']} with input as data.__diff_inputs[{i}]]")
        (src / "__diff.rego").write_text("\n".join(lines) + "\n")
        proc = subprocess.run(
            [str(opa_binary()), "eval", "--format", "json", "-d", str(src), "data.__diff"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{doc['package']}: opa eval failed for the batch: {proc.stdout}{proc.stderr}")
        out = msgspec.json.decode(proc.stdout)["result"][0]["expressions"][0]["value"]
        return out


@pytest.fixture(scope="module")
def corpus() -> list[tuple[dict[str, Any], Any]]:
    loaded = []
    for path in MODULES:
        doc = _load(path)
        rules = sorted({c["rule"] for c in doc["cases"]})
        eps = [f"{doc['package'].replace('.', '/')}/{r}" for r in rules]
        b = build_wasm_bundle({"m.rego": doc["module"]}, eps, doc.get("data"))
        pol = policy_from_files(bundle_files(b), host=HostConfig(runtime=RUNTIME), pool_size=1,
                                strict_builtin_errors=bool(doc.get("strict")))
        loaded.append((doc, pol))
    return loaded


def test_corpus_is_large_enough(corpus):
    n = sum(len(doc["cases"]) for doc, _ in corpus)
    assert n >= 300, f"corpus has {n} cases"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_matches_topdown(path: Path, corpus):
    doc, pol = next((d, p) for d, p in corpus if d["package"] == _load(path)["package"])
    if doc.get("strict"):
        _check_strict(doc, pol)
        return
    ok_cases = [c for c in doc["cases"] if not c["error"]]
    err_cases = [c for c in doc["cases"] if c["error"]]
    expected = _topdown_batch(doc, ok_cases) if ok_cases else {}
    mismatches = []
    for i, c in enumerate(ok_cases):
        want = expected[f"r{i}"]
        try:
            got = pol.evaluate(f"{doc['package'].replace('.', '/')}/{c['rule']}", c["input"])
        except wasm_errors.WasmError as exc:
            mismatches.append(f"{c['id']}: wasm error {exc!r}, topdown {want!r}")
            continue
        got_l = [] if got is UNDEFINED else [got]
        if _norm(got_l) != _norm(want):
            mismatches.append(f"{c['id']} input={c['input']!r}: wasm {got_l!r} != topdown {want!r}")
    for c in err_cases:
        td = opa_eval_one({"m.rego": doc["module"]}, doc.get("data"), f"data.{doc['package']}.{c['rule']}", c["input"])
        if "error" not in td:
            mismatches.append(f"{c['id']}: topdown did not error ({td!r}); fix the corpus")
            continue
        try:
            got = pol.evaluate(f"{doc['package'].replace('.', '/')}/{c['rule']}", c["input"])
            mismatches.append(f"{c['id']}: topdown errors, wasm returned {got!r}")
        except wasm_errors.EvaluationError:
            pass
    assert not mismatches, "\n".join(mismatches)


def _check_strict(doc: dict[str, Any], pol: Any) -> None:
    """`--strict-builtin-errors`: the same builtin error message from both (one opa run per case)."""
    mismatches = []
    for c in doc["cases"]:
        td = opa_eval_one({"m.rego": doc["module"]}, doc.get("data"), f"data.{doc['package']}.{c['rule']}", c["input"],
                          flags=("--strict-builtin-errors",))
        try:
            got = pol.evaluate(f"{doc['package'].replace('.', '/')}/{c['rule']}", c["input"])
            mine = None
        except wasm_errors.BuiltinHalt as exc:
            got, mine = None, str(exc)
        if "error" not in td:
            if mine is not None or _norm(got) != _norm(td.get("value")):
                mismatches.append(f"{c['id']}: topdown {td!r}, wasm {got!r} / {mine!r}")
            continue
        if mine not in td["messages"]:
            mismatches.append(f"{c['id']}: topdown says {td['messages']!r}, wasm says {mine!r}")
    assert not mismatches, "\n".join(mismatches)
