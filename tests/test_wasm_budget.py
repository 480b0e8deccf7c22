"""Host builtins inside the evaluation's budget: RE2 regexes answer pathological patterns in linear
time, long loops in host code see the deadline, results that cannot fit the policy's memory are
refused before the host allocates them, and a late evaluation that also runs out of memory fails
as late (one error kind for one policy and input)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.opawasm import UNDEFINED, policy_from_files
from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.builtins.registry import EvalContext
from bridge.opawasm.host import HostConfig
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_one

MODULE = """package budget
import rego.v1

redos := regex.replace(input.text, "(a+)+$", "")
range_step := numbers.range_step(1, input.n, 1)
range_small := count(numbers.range_step(1, 100000, 1))
width := sprintf(input.f, [1])
template := strings.render_template("{{range $.a}}{{range $.a}}{{range $.a}}x{{end}}{{end}}{{end}}", {"a": numbers.range(1, 400)})
dense := {sprintf("%d", [n]): [sprintf("%d", [m]) | some m in numbers.range(0, 40); m != n] | some n in numbers.range(0, 40)}
paths := graph.reachable_paths(dense, ["0"])
yaml_bomb := yaml.unmarshal(input.y)
"""
ENTRYPOINTS = ["budget/redos", "budget/range_step", "budget/range_small", "budget/width", "budget/template",
               "budget/paths", "budget/yaml_bomb"]


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return build_wasm_bundle({"m.rego": MODULE}, ENTRYPOINTS)


@pytest.fixture(scope="module")
def policy(bundle: bytes):
    pol = policy_from_files(bundle_files(bundle), pool_size=2, timeout=2.0)
    yield pol
    pol.close()


@pytest.mark.parametrize("n", [24, 5000])
def test_redos_pattern_answers_in_linear_time_with_opas_result(policy, n: int):
    text = "a" * n + "!"
    policy.evaluate("budget/redos", {"text": text})  # warm: compile and cache the pattern
    t0 = time.perf_counter()
    got = policy.evaluate("budget/redos", {"text": text})
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.05, f"{elapsed * 1000:.1f} ms for {n + 1} characters"
    want = opa_eval_one({"m.rego": MODULE}, None, "data.budget.redos", {"text": text})
    assert want == {"defined": True, "value": got}


def test_a_range_past_the_memory_cap_fails_before_it_is_built(policy):
    for _ in range(3):  # the same kind every time: sized, not timed
        t0 = time.perf_counter()
        with pytest.raises(wasm_errors.OutOfMemory, match=r"numbers\.range_step"):
            policy.evaluate("budget/range_step", {"n": 2e7})
        assert time.perf_counter() - t0 < 0.5
    assert policy.evaluate("budget/range_small") == 100000


def test_a_format_width_past_the_memory_cap_fails_before_it_is_built(policy):
    # Go takes a width of at most 7 digits (a longer one ends the format, as OPA answers), so 30
    # of the widest ask for ~300 MB, past the 256 MiB cap
    with pytest.raises(wasm_errors.OutOfMemory, match="sprintf"):
        policy.evaluate("budget/width", {"f": "%9999999d" * 30})
    assert policy.evaluate("budget/width", {"f": "%999999999d"}) == "%!(NOVERB)%!(EXTRA int64=1)"
    assert policy.evaluate("budget/width", {"f": "%5d"}) == "    1"


@pytest.mark.parametrize("entrypoint", ["budget/template", "budget/paths"])
def test_long_host_loops_stop_at_the_deadline(policy, entrypoint: str):
    t0 = time.perf_counter()
    with pytest.raises(wasm_errors.DeadlineExceeded):
        policy.evaluate(entrypoint, timeout=0.2)
    assert time.perf_counter() - t0 < 1.0, "the host builtin ran on past its deadline"


def test_yaml_alias_bomb_is_refused_quickly(policy):
    bomb = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join(["*" + chr(97 + i)] * 10) + "]\n" for i in range(8))
    t0 = time.perf_counter()
    assert policy.evaluate("budget/yaml_bomb", {"y": bomb}) is UNDEFINED  # go-yaml refuses it: an error, undefined
    assert time.perf_counter() - t0 < 0.5


def test_deadline_beats_memory_in_host_checks():
    late = EvalContext(0, time.monotonic() - 1, HostConfig(), memory_limit=1024)
    with pytest.raises(wasm_errors.DeadlineExceeded):
        late.check_size(1 << 20, "test")
    on_time = EvalContext(0, time.monotonic() + 10, HostConfig(), memory_limit=1024)
    with pytest.raises(wasm_errors.OutOfMemory):
        on_time.check_size(1 << 20, "test")
    on_time.check_size(512, "test")


_RSS_PROBE = """
import json, resource, sys
from bridge.opawasm import errors, policy_from_files
from tests.wasm_helpers import bundle_files
pol = policy_from_files(bundle_files(open(sys.argv[1], "rb").read()), pool_size=1, timeout=5.0)
pol.evaluate("budget/range_small")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    pol.evaluate("budget/range_step", {"n": 2e7})
    kind = "none"
except errors.WasmError as exc:
    kind = type(exc).__name__
print(json.dumps({"before_kb": before, "after_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "kind": kind}))
"""


def test_the_process_stays_under_its_cap_on_a_huge_range(bundle: bytes, tmp_path: Path):
    # a fresh process, so its peak RSS is this evaluation's and not the test session's
    path = tmp_path / "b.tar.gz"
    path.write_bytes(bundle)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True, check=True,
                         cwd=root, timeout=120)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["kind"] == "OutOfMemory"
    grown_mb = (probe["after_kb"] - probe["before_kb"]) / 1024
    assert grown_mb < 16, f"peak RSS grew by {grown_mb:.0f} MB"
