"""The policy write path's compile with the real opa: stages side by side report the error the
sequential order would, the revision of a built tree matches the one decided without compiling, the
`http.send` URL check parses a module text once, and the evaluator's load check (Winch) refuses what
the evaluator cannot load, its module serving first while the serving engine compiles it once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import wasmtime

from bridge.opabundle.archive import write_bundle
from bridge.opabundle.keys import generate_keypair
from bridge.opabundle.signing import sign_bundle
from bridge.opawasm import WasmEvaluator, policy_from_files
from bridge.opawasm import engine as engine_mod
from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.engine import load_check
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import BundleDefinition, revision_for, source_digest
from controlplane.bundles.findings import CompileError
from controlplane.policies.bundler import check_loads
from tests.wasm_helpers import build_wasm_bundle, bundle_files

BRIDGE = "http://127.0.0.1:8016"
OK = 'package demo\n\nimport rego.v1\n\n# METADATA\n# entrypoint: true\nallow if input.user == "alice"\n'
CALLS_OUT = 'package demo.out\n\nimport rego.v1\n\nr := http.send({"method": "GET", "url": "http://127.0.0.1:9/x"})\n'
CALLS_BRIDGE = 'package demo.ok\n\nimport rego.v1\n\nr := http.send({"method": "GET", "url": "' + BRIDGE + '/v1"})\n'


def _tree(root: Path, files: dict[str, str]) -> BundleDefinition:
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    return BundleDefinition(name="demo", sources=["src"], roots=["demo"], run_tests=False)


@pytest.fixture
def compiler(opa_bin, tmp_path):
    return Compiler(tmp_path, opa=opa_bin, bridge_url=BRIDGE)


def test_the_revision_of_a_finished_tree_is_the_one_decided_without_compiling(compiler, tmp_path):
    d = _tree(tmp_path, {"policy.rego": OK})
    overlay, metadata = {"demo": {"config": {"x": 1}}}, {"certificates": {"r": {"certified": True}}}
    built = compiler.build_tree(d, base=tmp_path)
    for meta in (None, metadata):  # the certificate arrives after the build: same bytes, its own revision
        compiled = compiler.finish(built, overlay, meta)
        want = revision_for("demo", source_digest([tmp_path / "src"], tmp_path.resolve(), overlay, meta))
        assert compiled.revision == want
        for files in (compiled.rego_files, compiled.wasm_files):
            manifest = json.loads(files["/.manifest"])
            assert manifest["revision"] == want and manifest["roots"] == ["demo"]
            assert manifest["metadata"].get("certificates") == (meta or {}).get("certificates")
    assert compiler.finish(built, overlay, None).revision != compiler.finish(built, overlay, metadata).revision


def test_the_earliest_failing_stage_is_reported_as_in_sequence(compiler, tmp_path):
    # a parse error fails `opa check` and both builds at once: the check's finding is the one told
    d = _tree(tmp_path, {"policy.rego": OK, "broken.rego": "package demo.broken\n\nallow if {\n"})
    with pytest.raises(CompileError) as err:
        compiler.build_tree(d, base=tmp_path)
    assert err.value.stage == "check"
    assert any(m.file.endswith("broken.rego") and m.row >= 3 for m in err.value.messages)


def test_a_url_off_the_bridge_is_refused_and_each_text_is_parsed_once(compiler, tmp_path, monkeypatch):
    parses: list[list[str]] = []
    real = compiler._run

    def counting(args, cwd, **kw):
        if args[0] == "parse":
            parses.append(args)
        return real(args, cwd, **kw)

    monkeypatch.setattr(compiler, "_run", counting)
    d = _tree(tmp_path, {"policy.rego": OK, "ok.rego": CALLS_BRIDGE})
    compiler.build_tree(d, base=tmp_path)
    assert len(parses) == 1  # only the module that calls http.send
    compiler.build_tree(d, base=tmp_path)
    assert len(parses) == 1  # the same text: its findings are known
    (tmp_path / "src" / "out.rego").write_text(CALLS_OUT)
    with pytest.raises(CompileError) as err:
        compiler.build_tree(d, base=tmp_path)
    assert len(parses) == 2
    [finding] = err.value.messages
    assert finding.code == "rego_http_send_refused" and finding.file.endswith("out.rego") and finding.row == 5
    with pytest.raises(CompileError):  # refused again from what is known, without a parse
        compiler.build_tree(d, base=tmp_path)
    assert len(parses) == 2


# -- the load check: Winch for the proof, Cranelift compiled in the background for serving -----------

PARSES_MODULES = ('package demo.meta\n\nimport rego.v1\n\n# METADATA\n# entrypoint: true\n'
                  'm := rego.parse_module("x.rego", input.text)\n')
SLOW = "package t\n\nimport rego.v1\n\nslow if {\n  some i in numbers.range(1, 4000)\n  some j in numbers.range(1, 4000)\n  i * j == -1\n}\n"


def test_a_module_needing_a_builtin_the_evaluator_lacks_is_refused_by_the_load_check(compiler, tmp_path):
    d = _tree(tmp_path, {"policy.rego": OK, "meta.rego": PARSES_MODULES})
    built = compiler.build_tree(d, base=tmp_path)  # opa builds it: only the evaluator can refuse it
    with pytest.raises(CompileError) as err:
        check_loads(compiler.finish(built).wasm_files)
    assert err.value.stage == "load"
    [finding] = err.value.messages
    assert finding.code == "wasm_load_error" and "rego.parse_module" in finding.message


def test_the_load_check_runs_beside_the_other_stages_and_their_errors_come_first(compiler, tmp_path, monkeypatch):
    """`build_tree(after_wasm=...)` runs the load check on the wasm build's files while `check
    --strict` is still running (that stage here waits until the load check has started: run after
    every stage, it would wait its whole minute), and its error is the last in the sequential order:
    a strict-check error wins over it."""
    started = threading.Event()
    real_check = compiler.check

    def slow_check(*args, **kwargs):
        assert started.wait(60), "the load check waited for `check --strict`"
        return real_check(*args, **kwargs)

    def loads(files):
        started.set()
        check_loads(files)

    monkeypatch.setattr(compiler, "check", slow_check)
    d = _tree(tmp_path / "a", {"policy.rego": OK, "meta.rego": PARSES_MODULES})
    with pytest.raises(CompileError) as err:
        compiler.build_tree(d, base=tmp_path / "a", after_wasm=loads)
    assert err.value.stage == "load" and "rego.parse_module" in err.value.messages[0].message
    started.clear()
    unused = OK + '\nx if {\n  y := 1\n  input.user == "bob"\n}\n'  # builds; `check --strict` refuses it
    d = _tree(tmp_path / "b", {"policy.rego": unused, "meta.rego": PARSES_MODULES})
    with pytest.raises(CompileError) as err:
        compiler.build_tree(d, base=tmp_path / "b", after_wasm=loads)
    assert err.value.stage == "check" and started.is_set()


def test_the_load_check_s_module_serves_first_and_the_serving_engine_compiles_it_once(compiler, tmp_path, monkeypatch):
    """The check compiles with Winch on its own engine and keeps the module: the evaluator following
    the new revision serves on it without compiling again, while the serving engine compiles the
    module once behind it; a later load of the same module compiles nothing."""
    compiles: list[wasmtime.Engine] = []
    real = engine_mod._new_module

    def counting(eng, wasm):
        compiles.append(eng)
        return real(eng, wasm)

    monkeypatch.setattr(engine_mod, "_new_module", counting)
    d = _tree(tmp_path, {"policy.rego": OK.replace("alice", f"alice-{tmp_path.name}")})  # bytes no cache has
    files = compiler.finish(compiler.build_tree(d, base=tmp_path)).wasm_files
    check_loads(files)  # Winch, on the check's engine
    key = generate_keypair("RS256", "write-path")
    ev = WasmEvaluator({key.kid: key.verification_key()}, pool_size=2)
    try:
        first = ev.load(write_bundle(sign_bundle(dict(files), key)), baseline_first=True)
        assert first.on_baseline and ev.evaluate("demo/allow", {"user": f"alice-{tmp_path.name}"}) is True
        assert ev.settle(120)
        assert not ev.policy.on_baseline and ev.evaluate("demo/allow", {"user": f"alice-{tmp_path.name}"}) is True
    finally:
        ev.close()
    check_engine, serving = engine_mod._Engine.check, engine_mod.engine()
    assert check_engine is not None and check_engine is not serving
    assert [e is check_engine for e in compiles] == [True, False]  # one check compile, one serving compile
    check_loads(files)
    policy_from_files(files, pool_size=1).close()
    assert len(compiles) == 2  # both modules are kept


def test_deadlines_and_fuel_hold_on_the_load_checks_engine():
    files = bundle_files(build_wasm_bundle({"p.rego": SLOW}, ["t/slow"]))
    with load_check():
        policy = policy_from_files(files, pool_size=1)
        try:
            with pytest.raises(wasm_errors.DeadlineExceeded):  # epochs tick on the Winch engine too
                policy.evaluate("t/slow", {}, timeout=0.05)
            with pytest.raises(wasm_errors.InlineBudgetExceeded):  # and fuel runs out on it
                policy.evaluate("t/slow", {}, inline=True)
        finally:
            policy.close()
