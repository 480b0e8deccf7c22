"""The compiler against the real opa: structured errors per stage, both artifacts, stable revisions."""

from __future__ import annotations

import json
import shutil

import pytest

from bridge.kernel.errors import GroqPolicyError
from bridge.opabundle.keys import generate_keypair
from bridge.opabundle.verify import keyring, verify_archive
from controlplane.bundles import wasmsource
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import BundleDefinition, load_definition, load_definitions
from controlplane.bundles.findings import CompileError
from controlplane.bundles.publisher import BundlePublisher
from controlplane.bundles.revisions import RevisionStore
from tests.conftest import REPO_ROOT

GOOD = """# METADATA
# title: demo
package demo.policy

# METADATA
# entrypoint: true
decision := {"decision": "allow", "reasons": [], "confidence": 1} if input.ok == true
"""
GOOD_TEST = """package demo.policy_test

import data.demo.policy

test_allow if policy.decision.decision == "allow" with input as {"ok": true}
"""


@pytest.fixture(scope="module")
def compiler(opa_bin):
    return Compiler(REPO_ROOT, opa=opa_bin)


def test_compiles_source_into_rego_and_wasm_artifacts(compiler):
    out = compiler.compile_source("demo", {"policy.rego": GOOD, "policy_test.rego": GOOD_TEST})
    assert out.entrypoints == ["demo/policy/decision"]
    assert [t.name for t in out.tests] == ["test_allow"] and out.tests[0].passed
    assert "/policy.wasm" in out.wasm_files and "/policy.wasm" not in out.rego_files
    assert not any(name.endswith("_test.rego") for name in out.rego_files), "tests must not ship in bundles"
    assert json.loads(out.rego_files["/.manifest"])["revision"] == out.revision
    assert out.revision.startswith("demo-")


def test_same_sources_same_revision_and_different_sources_different(compiler):
    a = compiler.compile_source("demo", {"policy.rego": GOOD}, run_tests=False)
    b = compiler.compile_source("demo", {"policy.rego": GOOD}, run_tests=False)
    c = compiler.compile_source("demo", {"policy.rego": GOOD.replace("allow", "deny")}, run_tests=False)
    assert a.revision == b.revision != c.revision


def test_parse_error_is_structured_with_file_row_col(compiler):
    with pytest.raises(CompileError) as err:
        compiler.compile_source("demo", {"policy.rego": "package demo.policy\n\nx := )\ny := 2\n"})
    exc = err.value
    assert exc.stage == "check"
    msg = exc.messages[0]
    assert (msg.file, msg.row, msg.code) == ("demo/policy.rego", 3, "rego_parse_error")
    assert "demo/policy.rego:3:" in str(exc)


def test_strict_mode_errors_are_reported(compiler):
    src = "package demo.policy\n\nimport data.unused\n\nx := 1\n"
    with pytest.raises(CompileError) as err:
        compiler.compile_source("demo", {"policy.rego": src})
    assert err.value.stage == "check"
    assert any(m.code == "rego_compile_error" and m.row == 3 for m in err.value.messages)


def test_type_error_is_reported_with_location(compiler):
    src = 'package demo.policy\n\nx := 1 + "a"\n'
    with pytest.raises(CompileError) as err:
        compiler.compile_source("demo", {"policy.rego": src})
    assert err.value.messages[0].code == "rego_type_error"
    assert err.value.messages[0].row == 3


def test_failing_opa_test_blocks_the_build(compiler):
    bad_test = GOOD_TEST.replace('"allow"', '"deny"')
    with pytest.raises(CompileError) as err:
        compiler.compile_source("demo", {"policy.rego": GOOD, "policy_test.rego": bad_test})
    exc = err.value
    assert exc.stage == "test"
    assert exc.messages[0].message == "data.demo.policy_test.test_allow failed"
    assert exc.messages[0].file.endswith("policy_test.rego") and exc.messages[0].row == 5


def test_path_escape_in_module_names_is_refused(compiler):
    with pytest.raises(CompileError, match="path escapes the bundle"):
        compiler.compile_source("demo", {"../evil.rego": GOOD})


def test_missing_source_is_a_clear_error(compiler, tmp_path):
    with pytest.raises(CompileError, match="source not found"):
        compiler.compile(BundleDefinition(name="x", sources=["nope"]), base=tmp_path)


def test_bundle_definition_errors_are_clear(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text('name = "b"\nsources = "rego"\n')
    with pytest.raises(GroqPolicyError, match=r"invalid bundle definition: Expected `array`, got `str` - at `\$.sources`"):
        load_definition(bad)
    bad.write_text('name = "b"\nsources = ["rego"]\nsurprise = 1\n')
    with pytest.raises(GroqPolicyError, match="unknown field `surprise`"):
        load_definition(bad)


def test_library_definition_builds_both_signed_artifacts_with_overlay(compiler, tmp_path):
    (definition,) = load_definitions(REPO_ROOT / "bundles")
    key = generate_keypair("ES256", kid="test-key")
    store = RevisionStore(tmp_path)
    overlay = {"groqpolicy": {"config": {"bridge_url": "http://127.0.0.1:1"}}}
    publisher = BundlePublisher(compiler, store, key, REPO_ROOT, overlay=overlay)
    assert publisher.publish_definitions([definition]) == ["groqpolicy"]
    keys = keyring(key.verification_key())
    rego_meta, rego = store.get("groqpolicy", "rego")
    wasm_meta, wasm = store.get("groqpolicy", "wasm")
    assert rego_meta.revision == wasm_meta.revision
    verify_archive(rego, keys, keyid="test-key")
    verify_archive(wasm, keys, keyid="test-key")
    from bridge.opabundle.archive import read_bundle

    files = read_bundle(wasm)
    manifest = json.loads(files["/.manifest"])
    assert manifest["roots"] == ["groqpolicy", "system/authz"]
    assert {w["entrypoint"] for w in manifest["wasm"]} >= {
        "groqpolicy/policies/security_policies/decision", "groqpolicy/constitution/pre_validation",
    }
    assert json.loads(files["/data.json"])["groqpolicy"]["config"]["bridge_url"] == "http://127.0.0.1:1"
    # unchanged sources: nothing to publish, and a restarted store serves the very same bytes
    assert publisher.publish_definitions([definition]) == []
    restarted = RevisionStore(tmp_path)
    assert restarted.get("groqpolicy", "rego") == (rego_meta, rego)


def test_the_rego_target_is_what_opa_build_makes_of_the_sources(compiler, tmp_path):
    """The rego target (what agents load) comes from the wasm build's files, not a second whole-library
    `opa build`: file for file, in order and byte for byte what `opa build -t rego` makes, the
    modules as written (comments kept, pattern builtins not routed), data merged by OPA."""
    shutil.copytree(REPO_ROOT / "rego", tmp_path / "rego")
    team = tmp_path / "rego" / "team"
    team.mkdir()
    (team / "routes.rego").write_text('package team.routes\n\n# routed on the wasm target only\n'
                                      'allow if glob.match("/api/*", ["/"], input.path)\n')
    (team / "data.json").write_text('{"limits": {"rate": 5}}')
    built = compiler.build_tree(BundleDefinition(name="demo", sources=["rego"]), base=tmp_path)
    rego_by_opa = compiler.build([tmp_path / "rego"], "rego", "r1", tmp_path)
    wasm_by_opa = compiler.build([tmp_path / "rego"], "wasm", "r1", tmp_path)
    derived = wasmsource.rego_target(wasm_by_opa, tmp_path)
    assert derived == rego_by_opa and list(derived) == list(rego_by_opa)
    assert built.rego_files["/rego/team/routes.rego"] == (team / "routes.rego").read_bytes()
    assert b"glob.match(" in built.rego_files["/rego/team/routes.rego"]
    assert json.loads(built.rego_files["/data.json"])["team"] == {"limits": {"rate": 5}}
    assert "/policy.wasm" not in built.rego_files and "wasm" not in json.loads(built.rego_files["/.manifest"])
    # a module whose source is outside the tree: the rego target is built by opa itself
    assert wasmsource.rego_target({**wasm_by_opa, "/elsewhere/x.rego": b"package x"}, tmp_path) is None
