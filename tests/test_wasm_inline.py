"""The inline budget and the error kind of a runaway, on the real evaluator (wasmtime, `opa build`).

An inline evaluation (`inline=True`, what the control plane's event loop does) either fits a
count of wasm instructions and a millisecond of host builtins or stops with InlineBudgetExceeded,
the same way for the same policy and input every time; the same evaluation off the loop then runs
to its answer or its deadline. A runaway fails with one error kind whatever the machine's load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.opawasm import UNDEFINED, policy_from_files
from bridge.opawasm import errors as wasm_errors
from tests.wasm_helpers import build_wasm_bundle, bundle_files

MODULE = """package loop
import rego.v1

cheap if input.user == "alice"

# pure computation: n*n iterations, nothing kept
spin if {
  some i in numbers.range(1, input.n)
  some j in numbers.range(1, input.n)
  i == 0 - j
}

# n*n elements kept: runs out of a small memory cap after a lot of work
grow := count([x | some i in numbers.range(1, input.n); some j in numbers.range(1, input.n); x := i * j])

# all of the time in a host builtin, which the instruction count does not see
template := strings.render_template("{{range $.a}}{{range $.a}}{{range $.a}}x{{end}}{{end}}{{end}}", {"a": numbers.range(1, 400)})
"""
ENTRYPOINTS = ["loop/cheap", "loop/spin", "loop/grow", "loop/template"]


@pytest.fixture(scope="module")
def files(opa_bin) -> dict:
    return bundle_files(build_wasm_bundle({"m.rego": MODULE}, ENTRYPOINTS))


@pytest.fixture(scope="module")
def policy(files):
    pol = policy_from_files(files, pool_size=4, timeout=1.0)
    yield pol
    pol.close()


def test_a_cheap_evaluation_fits_inline(policy):
    assert policy.evaluate("loop/cheap", {"user": "alice"}, inline=True) is True
    assert policy.evaluate("loop/spin", {"n": 10}, inline=True) is UNDEFINED  # 100 iterations fit


@pytest.mark.parametrize(("entrypoint", "input"), [("loop/spin", {"n": 100_000}), ("loop/template", None)])
def test_a_long_evaluation_is_refused_inline_the_same_way_every_time(policy, entrypoint, input):
    for _ in range(3):  # an instance that overran is dropped; the next inline call makes a fresh one
        with pytest.raises(wasm_errors.InlineBudgetExceeded, match="inline budget"):
            policy.evaluate(entrypoint, input, inline=True)
    # not a verdict on the policy: off the loop it runs into its (real) deadline
    with pytest.raises(wasm_errors.DeadlineExceeded):
        policy.evaluate(entrypoint, input, timeout=0.3)
    assert policy.evaluate("loop/cheap", {"user": "alice"}, inline=True) is True


def test_a_call_for_n_inputs_gets_n_budgets(policy):
    """A batched call evaluates a chunk of contexts at once: `inline=n` gives it n budgets, so work
    that overruns one budget fits when it stands for n contexts (and still stops past n)."""
    with pytest.raises(wasm_errors.InlineBudgetExceeded):
        policy.evaluate("loop/spin", {"n": 60}, inline=True)
    assert policy.evaluate("loop/spin", {"n": 60}, inline=25) is UNDEFINED
    with pytest.raises(wasm_errors.InlineBudgetExceeded):
        policy.evaluate("loop/spin", {"n": 100_000}, inline=25)


def test_inline_never_waits_for_an_instance(files):
    """With every instance busy (here: the only one), an inline call is refused at once."""
    pol = policy_from_files(files, pool_size=1, timeout=1.0)
    try:
        held = pol.pool.acquire()
        with pytest.raises(wasm_errors.InlineBudgetExceeded, match="no policy instance free"):
            pol.evaluate("loop/cheap", {"user": "alice"}, inline=True)
        pol.pool.release(held)
        assert pol.evaluate("loop/cheap", {"user": "alice"}, inline=True) is True
    finally:
        pol.close()


def _kinds(pol, entrypoint: str, input: dict, parallel: int) -> set[str]:
    def once(_: int) -> str:
        try:
            pol.evaluate(entrypoint, input)
            return "ok"
        except wasm_errors.WasmError as exc:
            return type(exc).__name__

    kinds = {once(0), once(1)}  # alone
    with ThreadPoolExecutor(parallel) as pool:  # and with 2 * parallel evaluations fighting for the cores
        kinds |= set(pool.map(once, range(2 * parallel)))
    return kinds


def test_a_runaway_fails_with_one_error_kind_under_any_load(files):
    """A policy that keeps allocating runs out of a 24 MiB cap well before its deadline when the
    machine is idle, and might reach its deadline first when 8 others run: it was a runaway either
    way (more work than its deadline stands for), so it always fails as late. One that runs out of
    memory after little work always fails as too big."""
    pol = policy_from_files(files, pool_size=8, timeout=1.0, memory_limit=24 << 20)
    try:
        assert _kinds(pol, "loop/grow", {"n": 2000}, 8) == {"DeadlineExceeded"}
        assert _kinds(pol, "loop/spin", {"n": 100_000}, 8) == {"DeadlineExceeded"}
        small = policy_from_files(files, pool_size=8, timeout=1.0, memory_limit=2 << 20)
        try:
            assert _kinds(small, "loop/grow", {"n": 400}, 8) == {"OutOfMemory"}
        finally:
            small.close()
    finally:
        pol.close()
