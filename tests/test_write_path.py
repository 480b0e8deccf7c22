"""The policy write path's compile with the real opa: stages side by side report the error the
sequential order would, the revision of a built tree matches the one decided without compiling, and
the `http.send` URL check parses a module text once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.bundles.compiler import BundleDefinition, CompileError, Compiler, revision_for, source_digest

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

    def counting(args, cwd):
        if args[0] == "parse":
            parses.append(args)
        return real(args, cwd)

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
