"""The policy library in rego/, checked by the real opa: strict check, opa test, WASM build."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

REGO_DIR = Path(__file__).resolve().parent.parent / "rego"

POLICY_TYPES = (
    "constitutional_compliance",
    "data_governance",
    "ethical_constraints",
    "regulatory_compliance",
    "operational_policies",
    "security_policies",
    "risk_management",
)
CONSTITUTION_ENTRYPOINTS = {f"groqpolicy/constitution/{stage}_validation{many}" for stage in ("pre", "post") for many in ("", "s")}
ENTRYPOINTS = {f"groqpolicy/policies/{t}/decision" for t in POLICY_TYPES} | CONSTITUTION_ENTRYPOINTS

# The number of `opa test` cases written so far; adding tests is fine, losing them is not.
MIN_TESTS = 115

# Builtins the compiled module may leave to the host (opa_builtin0..4). Anything else
# would be a new obligation for the in-process WASM evaluator.
HOST_BUILTINS = {"http.send", "time.now_ns", "time.parse_rfc3339_ns", "time.clock", "time.weekday"}


def run(opa_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(opa_bin), *args], capture_output=True, text=True, timeout=120, check=False)


def test_opa_check_strict(opa_bin: Path) -> None:
    proc = run(opa_bin, "check", "--strict", str(REGO_DIR))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_opa_fmt_clean(opa_bin: Path) -> None:
    proc = run(opa_bin, "fmt", "--list", str(REGO_DIR))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"not opa-fmt formatted: {proc.stdout}"


def test_opa_test_all_pass(opa_bin: Path) -> None:
    proc = run(opa_bin, "test", "-v", str(REGO_DIR))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    results = re.findall(r"^(data\.\S+): (PASS|FAIL|ERROR|SKIPPED)", out, re.MULTILINE)
    assert len(results) >= MIN_TESTS, f"only {len(results)} tests ran (want >= {MIN_TESTS})\n{out}"
    failed = [name for name, status in results if status in ("FAIL", "ERROR")]
    assert failed == [], out
    # Every policy has tests of its own, and they cover allow, deny and review.
    for policy_type in POLICY_TYPES:
        names = [n for n, _ in results if n.startswith(f"data.groqpolicy.policies.{policy_type}_test.")]
        assert names, f"{policy_type}: no tests"
        assert any(".test_examples" in n for n in names), f"{policy_type}: no allow/deny/review example test"


def test_every_policy_has_allow_deny_review_examples(opa_bin: Path) -> None:
    """The examples in each *_test package are what end-to-end tests reuse."""
    proc = run(opa_bin, "eval", "--format", "json", "-d", str(REGO_DIR), "data.groqpolicy.policies")
    assert proc.returncode == 0, proc.stderr
    packages = json.loads(proc.stdout)["result"][0]["expressions"][0]["value"]
    for policy_type in POLICY_TYPES:
        examples = packages[f"{policy_type}_test"]["examples"]
        assert {"allow", "deny", "review"} <= set(examples), policy_type


@pytest.fixture(scope="module")
def wasm_bundle(opa_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Without --ignore, test rules that refer to an entrypoint become entrypoints
    # themselves (opa build enumerates dependents of annotated entrypoints).
    out = tmp_path_factory.mktemp("wasm") / "bundle.tar.gz"
    proc = run(opa_bin, "build", "-t", "wasm", "--ignore", "*_test.rego", str(REGO_DIR), "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        for member in tar.getmembers():
            if member.name.lstrip("/") == name:
                fh = tar.extractfile(member)
                assert fh is not None
                return fh.read()
    raise AssertionError(f"{bundle}: no {name}")


def test_wasm_manifest_lists_annotated_entrypoints(wasm_bundle: Path) -> None:
    manifest = json.loads(_member(wasm_bundle, ".manifest"))
    wasm = manifest["wasm"]
    assert {w["entrypoint"] for w in wasm} == ENTRYPOINTS
    for w in wasm:
        assert w["module"] == "/policy.wasm"
        (annotation,) = w["annotations"]
        assert annotation["entrypoint"] is True
        assert annotation["title"]
        custom = annotation["custom"]
        assert custom["performance_tier"] in {"nano", "fast", "balanced", "premium", "reasoning"}
        if w["entrypoint"].startswith("groqpolicy/policies/"):
            assert custom["policy_type"] == w["entrypoint"].split("/")[2]


def test_wasm_bundle_carries_constitution_data(wasm_bundle: Path) -> None:
    data = json.loads(_member(wasm_bundle, "data.json"))
    constitution = data["groqpolicy"]["constitution"]
    assert constitution["hash"] == "cdd01ef066bc6cf2"
    ids = [p["id"] for p in constitution["principles"]]
    assert len(ids) == len(set(ids)) >= 8
    assert "roles" in data["groqpolicy"]["security"]


def test_wasm_module_needs_only_known_host_builtins(wasm_bundle: Path) -> None:
    wasmtime = pytest.importorskip("wasmtime")
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, _member(wasm_bundle, "policy.wasm"))
    linker = wasmtime.Linker(engine)
    memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(5, None)))
    linker.define(store, "env", "memory", memory)
    for imp in module.imports:
        if imp.name != "memory":
            ft = imp.type
            linker.define(store, imp.module, imp.name, wasmtime.Func(store, ft, lambda *a, ft=ft: 0 if ft.results else None))
    exports = linker.instantiate(store, module).exports(store)

    def dump(addr: int) -> object:
        start = exports["opa_json_dump"](store, addr)
        raw = bytearray()
        while (chunk := memory.read(store, start + len(raw), start + len(raw) + 4096)) and 0 not in chunk:
            raw += chunk
        raw += chunk[: chunk.index(0)]
        return json.loads(raw)

    builtins = dump(exports["builtins"](store))
    assert set(builtins) <= HOST_BUILTINS, f"new host builtins: {set(builtins) - HOST_BUILTINS}"
    assert "http.send" in builtins
    assert set(dump(exports["entrypoints"](store))) == ENTRYPOINTS


def _input_fields_read_from(module: dict, entry: str) -> set[str]:
    """The top-level `input` fields that the rules `entry` depends on (within the module) refer to;
    "*" when one of them takes `input` whole. Over-approximates: any var named like a rule counts
    as a dependency."""
    rules: dict[str, list[dict]] = {}
    for rule in module["rules"]:
        rules.setdefault(rule["head"].get("name") or rule["head"]["ref"][0]["value"], []).append(rule)
    fields: set[str] = set()
    seen: set[str] = set()
    todo = [entry]

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "ref" and isinstance(node.get("value"), list) and node["value"]:
            head, *rest = node["value"]
            if head == {"type": "var", "value": "input"}:
                fields.add(rest[0]["value"] if rest and rest[0].get("type") == "string" else "*")
                walk(rest)
                return
        if node.get("type") == "var" and node.get("value") == "input":
            fields.add("*")  # `input` as a term of its own: the whole document
        if node.get("type") == "var" and node.get("value") in rules and node["value"] not in seen:
            todo.append(node["value"])
        for value in node.values():
            walk(value)

    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for rule in rules.get(name, []):
            walk(rule)
    assert entry in seen and rules.get(entry), f"no rule {entry}"
    return fields


def test_pre_validation_asks_of_the_principal_only_whether_it_is_named(opa_bin: Path) -> None:
    """The pipeline memoises pre-validation per named-or-not principal (`constitution.named`), so the
    principal is read in `_principal_id` alone, and that rule is used only negated (`not
    _principal_id`: whether it is defined, never its value)."""
    proc = run(opa_bin, "parse", "--format", "json", str(REGO_DIR / "constitution" / "constitution.rego"))
    assert proc.returncode == 0, proc.stderr
    module = json.loads(proc.stdout)
    readers, uses = set(), []

    def walk(node: object, rule: str, negated: bool) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, rule, negated)
            return
        if not isinstance(node, dict):
            return
        if "terms" in node:  # an expression: `not` marks it negated
            negated = bool(node.get("negated"))
        value = node.get("value")
        if node.get("type") == "ref" and isinstance(value, list) and value:
            if value[0] == {"type": "var", "value": "input"} and len(value) > 1 and value[1].get("value") == "principal":
                readers.add(rule)
            if value[0] == {"type": "var", "value": "_principal_id"}:
                uses.append((rule, negated))
        if node.get("type") == "var" and value == "_principal_id":
            uses.append((rule, negated))
        for child in node.values():
            walk(child, rule, negated)

    for rule in module["rules"]:
        name = rule["head"].get("name") or rule["head"]["ref"][0]["value"]
        walk(rule.get("body", []), name, False)
        walk(rule.get("else", {}), name, False)
        walk(rule["head"].get("value", {}), name, False)
    assert readers == {"_principal_id"}, readers
    assert uses and all(negated for rule, negated in uses if rule != "_principal_id"), uses


def test_pre_validation_reads_only_the_request_fields_the_pipeline_passes(opa_bin: Path) -> None:
    """The pipeline gives pre-validation `PRE_FIELDS` of a request (and memoises its answers on
    them): a rule that read any other field would see it undefined. The library it imports must not
    read input at all."""
    from controlplane.evaluation.constitution import PRE_FIELDS

    proc = run(opa_bin, "parse", "--format", "json", str(REGO_DIR / "constitution" / "constitution.rego"))
    assert proc.returncode == 0, proc.stderr
    read = _input_fields_read_from(json.loads(proc.stdout), "pre_validation")
    assert read <= {*PRE_FIELDS, "constitutional_hash"}, read
    assert {"principal", "oversight", "constitutional_hash"} <= read  # the walk finds what it should
    for name in ("decision.rego",):
        proc = run(opa_bin, "parse", "--format", "json", str(REGO_DIR / "lib" / name))
        assert proc.returncode == 0, proc.stderr
        assert '"value":"input"' not in proc.stdout.replace(" ", ""), f"rego/lib/{name} reads input"
