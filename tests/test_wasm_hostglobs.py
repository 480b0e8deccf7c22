"""`glob.match`, `regex.match`, `regex.is_valid` and `regex.find_all_string_submatch_n` routed to the
host (`bridge.opawasm.hostroute`, `builtins/globs.py`): every answer, through a policy built as
the control plane builds the wasm target, equals the real `opa eval`'s (topdown), and so do the
error messages under strict builtin errors; the Rego rewrite touches only sure calls."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bridge.opawasm import WasmPolicy, hostroute
from bridge.opawasm.builtins import globs
from bridge.opawasm.errors import WasmError
from bridge.opawasm.values import UNDEFINED
from bridge.opawasm.hostroute import host_name
from controlplane.bundles import wasmsource
from controlplane.bundles.compiler import Compiler
from controlplane.infra.toolchain import opa_binary
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_one

GLOBS = [
    "*", "**", "?", "a*", "*a", "a*b", "a**b", "***", "a?b", "[abc]", "[!abc]", "[a-c]", "[!a-c]", "[-a]", "[\\]]",
    "[\\-a]", "[!!]", "\\*", "\\\\", "\\a", "{a,b}", "{a,{b,c}}d", "{}", "{,a}", "a}", "a,b", "{a,b}*{c,d}",
    "*.{jpg,png}", "/api/*", "/api/**", "/api/*/x/**", "**/x", "a/**/b", "*/*", "{*,b}/c", "x{a/b,c}y", "[.]",
    "[/]", "[!/]x", "?/?", "é*", "[é-ü]", "a.b", "a+b", "a(b)", "a|b", "^a$", "[z-z]x", "{[a-c],d}", "{a\\,b}",
    "{a,b}}", "[*]", "[?]", "[{]", "", "[\x00-a]", "\n*", "**\n", "a\\\\",
]
BAD_GLOBS = ["[]", "[!]", "[a-]", "[a-]]", "[a-z0-9]", "[ab", "[", "a\\", "{a,b", "}{", "[z-a]", "é[é-a]", "x[\\",
             "ab}{c", "[]]", "{a,{b}", "[a-bc]", "é{"]
VALUES = ["", "a", "b", "ab", "abc", "a/b", "a.b", "x", "ax", "bx", "/api/v1", "/api/v1/x", "/api/v1/x/y/z",
          "/api/", "x/b/c", "a/x/y/b", "d", "ad", "cd", "*", "\\", "]", "-", "!", "a,b", "a}", "f.jpg", "f.png",
          "é", "éx", "ñ", "a+b", "a(b)", "a|b", "^a$", "/", "{a,b}", "\n", "\nz", "xa/by", "xcy", "a\nb", "zx", "a\\"]
DELIMITERS: list[Any] = [None, [], ["/"], [".", "/"], ["b"], [","], ["é"]]
REGEXES = ["^a.*", "b$", "(", "[0-9]+", "^/api/v2/reports/[0-9]{4}-(0[1-9]|1[0-2])$", "(?i)AB", "\\d+", "a{2,}",
           "[[:alpha:]]+", "(?P<x>a)(?P<x>b)", "x*?", "\\bab\\b", "a$", "(a|b)+c", "\\p{Greek}", "[z-a]", "a**",
           "(?<n>a)", ""]
REGEX_VALUES = ["abc 123", "ab", "AB", "a\n", "/api/v2/reports/2024-12", "aab c", "αβγ", "", "ba", "b"]

PATTERNS = """package t

import rego.v1

globs contains [i, r] if {
	some i, c in input.globs
	r := glob.match(c[0], c[1], c[2])
}

regexes contains [i, r] if {
	some i, c in input.regexes
	r := regex.match(c[0], c[1])
}

valid := [regex.is_valid(p) | some p in input.patterns]

submatches contains [i, r] if {
	some i, c in input.regexes
	r := regex.find_all_string_submatch_n(c[0], c[1], -1)
}

one := glob.match(input.glob, input.delimiters, input.value)
"""


def build_routed(sources: dict[str, str], entrypoints: list[str], **options: Any) -> WasmPolicy:
    """The policy as the control plane builds its wasm target: sources rewritten, host names declared."""
    opa = str(opa_binary())
    caps = wasmsource.capabilities(subprocess.run([opa, "capabilities", "--current"], capture_output=True,
                                                  text=True, check=True).stdout)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        fh.write(caps)
    try:
        routed = {name: hostroute.rewrite(text) for name, text in sources.items()}
        bundle = build_wasm_bundle(routed, entrypoints, flags=("--capabilities", fh.name))
    finally:
        Path(fh.name).unlink()
    return WasmPolicy(bundle_files(bundle)["/policy.wasm"], None, pool_size=1, **options)


@pytest.fixture(scope="module")
def policy() -> WasmPolicy:
    return build_routed({"t.rego": PATTERNS}, ["t", "t/one"])


def _cases() -> dict[str, Any]:
    return {
        "globs": [[g, d, v] for g in GLOBS + BAD_GLOBS for d in DELIMITERS for v in VALUES],
        "regexes": [[p, v] for p in REGEXES for v in REGEX_VALUES],
        "patterns": REGEXES + ["a(b", "\\", "(?=a)"],
    }


def test_the_calls_go_to_the_host(policy: WasmPolicy) -> None:
    assert set(policy.builtin_ids) == set(hostroute.HOST_NAMES.values())


def test_answers_equal_opa_eval(policy: WasmPolicy) -> None:
    cases = _cases()
    want = opa_eval_one({"t.rego": PATTERNS}, None, "data.t", cases)
    assert want["defined"], want
    got = policy.evaluate("t", cases, timeout=60)  # thousands of calls, on a shared machine
    for key in ("globs", "regexes", "valid", "submatches"):
        assert got[key] == want["value"][key], key
    # the table is what it claims to be: both answers, and undefined (bad globs, bad regexes)
    answered = {i for i, _ in got["globs"]}
    assert len(answered) < len(cases["globs"]) and {r for _, r in got["globs"]} == {True, False}


@pytest.mark.parametrize("glob", BAD_GLOBS)
def test_strict_errors_are_opa_evals(glob: str) -> None:
    strict = build_routed({"t.rego": PATTERNS}, ["t", "t/one"], strict_builtin_errors=True)
    inp = {"glob": glob, "delimiters": [], "value": "a"}
    want = opa_eval_one({"t.rego": PATTERNS}, None, "data.t.one", inp, flags=("--strict-builtin-errors",))
    with pytest.raises(WasmError) as err:
        strict.evaluate("t/one", inp)
    message = str(err.value)
    assert "glob.match: glob: syntax error at" in message
    assert any(message.split("glob.match: ", 1)[1] in m for m in want["messages"]), (message, want)


def test_bad_operands_are_undefined(policy: WasmPolicy) -> None:
    for delimiters in (["ab"], [""], "x", 1):
        inp = {"glob": "a", "delimiters": delimiters, "value": "a"}
        assert policy.evaluate("t/one", inp) is UNDEFINED
        assert opa_eval_one({"t.rego": PATTERNS}, None, "data.t.one", inp) == {"defined": False}


def test_compiled_globs_are_kept_and_bounded() -> None:
    globs._compile_glob.cache_clear()
    for _ in range(3):
        assert globs.glob_match(None, "/api/*", ["/"], "/api/x") is True
    info = globs._compile_glob.cache_info()
    assert (info.misses, info.hits, info.maxsize) == (1, 2, globs.GLOB_CACHE_SIZE)
    long = "a" * globs.CACHED_PATTERN_CHARS + "*"
    assert globs.glob_match(None, long, None, "a" * (globs.CACHED_PATTERN_CHARS + 3)) is True
    assert globs._compile_glob.cache_info().currsize == 1  # a long glob is compiled for its call only


REWRITE = '''package r

import rego.v1

# glob.match("x", [], "x") in a comment stays
s := "glob.match(1) and regex.match(2)"
raw := `regex.match(a, b)`
a if glob.match("a*", [], input.v)
b if regex.match(`^a`, input.v)
c := regex.find_all_string_submatch_n("(a)", input.v, -1)
d := data.other.glob.match
mocked if glob.match("x", [], input.v) with glob.match as fake
fake(_, _, _) := true
'''


def test_rewrite_renames_only_sure_calls() -> None:
    out = hostroute.rewrite(REWRITE)
    assert '# glob.match("x", [], "x") in a comment stays' in out
    assert 's := "glob.match(1) and regex.match(2)"' in out
    assert "raw := `regex.match(a, b)`" in out
    assert 'a if groqpolicy_host.glob.match("a*", [], input.v)' in out
    assert "b if groqpolicy_host.regex.match(`^a`" in out
    assert "c := groqpolicy_host.regex.find_all_string_submatch_n(" in out
    assert "d := data.other.glob.match" in out
    assert hostroute.rewrite('e if glob.match ("a*")') == 'e if glob.match ("a*")'  # OPA does not read it as a call
    assert "with groqpolicy_host.glob.match as fake" in out


def test_rewrite_leaves_modules_that_rebind_the_head() -> None:
    imported = "package r\n\nimport data.lib.glob\n\nx if glob.match(1)\n"
    aliased = "package r\n\nimport data.lib as regex\n\nx if regex.match(1)\n"
    head = "package r\n\nglob.match(x) := x\n\ny := glob.match(1)\n"
    for text in (imported, aliased, head):
        assert hostroute.rewrite(text) == text
    assert hostroute.rewrite("package r\nimport data.lib.globs\nx if glob.match(a, [], b)\n").count("groqpolicy_host") == 1


def test_a_head_defined_in_another_file_of_the_package_keeps_the_call() -> None:
    """A rule named `glob.match` shadows the builtin in its whole package: the file that only calls
    it must not be routed (the wasm target would answer with the builtin, the agents with the rule)."""
    shadow = "package p\n\nimport rego.v1\n\nglob.match(_, _, _) := true\n"
    caller = "package p\n\nimport rego.v1\n\n# METADATA\n# entrypoint: true\nallow if glob.match(\"x\", [], \"y\")\n"
    compiler = Compiler(Path(tempfile.gettempdir()), opa=opa_binary())
    out = compiler.compile_source("p", {"a.rego": shadow, "b.rego": caller})
    want = opa_eval_one({"a.rego": shadow, "b.rego": caller}, None, "data.p.allow", {})
    assert want["value"] is True
    policy = WasmPolicy(out.wasm_files["/policy.wasm"], None, pool_size=1)
    assert policy.evaluate("p/allow", {}) is True
    assert not set(policy.builtin_ids) & {host_name(n) for n in hostroute.ROUTED}
    # `default` before the head blocks it as well
    with_default = "package q\n\ndefault glob.match(_, _, _) := false\n\nx if glob.match(a, [], b)\n"
    assert hostroute.rewrite(with_default) == with_default


def test_rewritten_module_with_mock_equals_opa_eval() -> None:
    sources = {"r.rego": REWRITE}
    entry = ["r"]
    routed = build_routed(sources, entry)
    for inp in ({"v": "abc"}, {"v": "x"}, {"v": "zz"}):
        want = opa_eval_one(sources, {"other": {"glob": {"match": 1}}}, "data.r", inp)
        got = routed.evaluate("r", inp)
        want_value = dict(want["value"])
        want_value.pop("d", None)  # data.other is not given to the wasm policy
        assert got == want_value, json.dumps([inp, got, want_value])


ROUTES = """# METADATA
# title: routes
package demo.routes

# METADATA
# entrypoint: true
decision := {"allowed": allowed, "valid": regex.is_valid(input.pattern)}

default allowed := false

allowed if glob.match("/api/*/items/**", ["/"], input.path)
"""
ROUTES_TEST = """package demo.routes_test

import data.demo.routes

test_glob if routes.allowed with input as {"path": "/api/v1/items/a/b", "pattern": "a"}
"""


@pytest.mark.parametrize("bridge_url", [None, "http://127.0.0.1:9/bridge"])
def test_the_control_plane_routes_only_the_wasm_target(bridge_url: str | None) -> None:
    compiler = Compiler(Path(tempfile.gettempdir()), opa=opa_binary(), bridge_url=bridge_url)
    out = compiler.compile_source("demo", {"policy.rego": ROUTES, "policy_test.rego": ROUTES_TEST})
    assert out.tests and all(t.passed for t in out.tests)  # `opa test` ran on the sources as written
    rego = {name: text for name, text in out.rego_files.items() if name.endswith(".rego")}
    assert [text.decode() for text in rego.values()] == [ROUTES]  # agents get the module untouched
    policy = WasmPolicy(out.wasm_files["/policy.wasm"], None, pool_size=1)
    assert set(policy.builtin_ids) == {host_name("glob.match"), host_name("regex.is_valid")}
    for inp in ({"path": "/api/v1/items/a/b", "pattern": "("}, {"path": "/api/v1/x/items", "pattern": "a+"}):
        want = opa_eval_one({"policy.rego": ROUTES}, None, "data.demo.routes.decision", inp)
        assert policy.evaluate("demo/routes/decision", inp) == want["value"]


def test_strict_error_for_a_delimiter_that_is_not_one_character() -> None:
    strict = build_routed({"t.rego": PATTERNS}, ["t", "t/one"], strict_builtin_errors=True)
    inp = {"glob": "a", "delimiters": ["ab"], "value": "a"}
    want = opa_eval_one({"t.rego": PATTERNS}, None, "data.t.one", inp, flags=("--strict-builtin-errors",))
    with pytest.raises(WasmError) as err:
        strict.evaluate("t/one", inp)
    assert any(str(err.value).split(": ", 1)[1] in m for m in want["messages"]), (str(err.value), want)
