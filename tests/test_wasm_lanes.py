"""The fuel-free lane (`bridge/opawasm/lanes.py`) on the real evaluator (wasmtime, `opa build`):
answers as `opa eval`'s, runaways stopped and classified as on the fuel lane under load, inline
evaluations kept on fuel, and no lane where a second run could repeat a side effect."""

from __future__ import annotations

import pytest

from bridge.opawasm import UNDEFINED, policy_from_files
from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.engine import load_check
from bridge.opawasm.host import HostConfig
from tests.test_wasm_inline import MODULE as LOOPS
from tests.test_wasm_inline import _kinds
from tests.wasm_helpers import build_wasm_bundle, bundle_files, opa_eval_one

MODULE = LOOPS + """
deny contains msg if {
  some c in input.containers
  not startswith(c.image, "registry.acme.example/")
  msg := sprintf("container %s: image %s does not come from a trusted registry", [c.name, c.image])
}

deny contains msg if {
  some c in input.containers
  c.memory > data.ceiling
  msg := sprintf("container %s: memory %d Mi is above %d Mi (%.1f%%)", [c.name, c.memory, data.ceiling, 100 * c.memory / data.ceiling])
}
"""
ENTRYPOINTS = ["loop/cheap", "loop/spin", "loop/grow", "loop/template", "loop/deny"]
DATA = {"ceiling": 2048}
INPUTS = [
    {"containers": [{"name": "api", "image": "registry.acme.example/api:1", "memory": 512}]},
    {"containers": [{"name": "sidecar", "image": "docker.io/envoy:latest", "memory": 4096},
                    {"name": "cache", "image": "ghcr.io/redis:7", "memory": 3000}]},
]


@pytest.fixture(scope="module")
def files(opa_bin) -> dict:
    return bundle_files(build_wasm_bundle({"m.rego": MODULE}, ENTRYPOINTS, DATA))


def _with_lane(files: dict, **kw):
    pol = policy_from_files(files, fuel_free_lane=True, **kw)
    assert pol.lane is not None
    pol.lane.start()
    assert pol.lane.ready.wait(120), "the fuel-free module did not compile"
    assert pol.lane.pool is not None
    return pol


def _inline(pol, entrypoint: str, inp: dict, tries: int = 5):
    """An inline evaluation of an input whose host builtins (`sprintf`) fit the inline budget on a
    quiet machine. Their share of that budget is wall-clock time (only wasm instructions are a
    count), so a preempted run on a loaded machine may overrun it: that one is tried again, a few
    times, because what is asserted here is where an inline evaluation runs and what it answers."""
    for _ in range(tries - 1):
        try:
            return pol.evaluate(entrypoint, inp, inline=True)
        except wasm_errors.InlineBudgetExceeded as exc:
            assert "host builtins" in str(exc), exc  # instructions over the count never get another try
    return pol.evaluate(entrypoint, inp, inline=True)


def test_the_lane_compiles_on_the_first_evaluation_off_the_loop(files):
    pol = policy_from_files(files, fuel_free_lane=True, pool_size=2, timeout=2.0)
    try:
        assert pol.lane is not None and pol.lane.pool is None
        assert pol.evaluate("loop/cheap", {"user": "alice"}, inline=True) is True
        assert not pol.lane.ready.wait(0.5), "an inline evaluation started the lane"
        assert pol.evaluate("loop/cheap", {"user": "alice"}) is True  # on the fuel lane, starting the lane
        assert pol.lane.ready.wait(120) and pol.lane.pool is not None
        assert pol.evaluate("loop/cheap", {"user": "alice"}) is True and pol.lane.pool.live == 1
    finally:
        pol.close()


def test_the_lane_answers_as_opa_and_inline_stays_on_fuel(files):
    pol = _with_lane(files, pool_size=2, timeout=2.0)
    try:
        for inp in INPUTS:
            want = opa_eval_one({"m.rego": MODULE}, DATA, "data.loop.deny", inp)
            assert want["defined"] and pol.evaluate("loop/deny", inp) == want["value"]
        assert pol.lane.pool.live == 1 and pol.pool.live == 1  # the lane served; the fuel lane only its first
        assert _inline(pol, "loop/deny", INPUTS[1]) == pol.evaluate("loop/deny", INPUTS[1])
        assert pol.pool.live == 1
        with pytest.raises(wasm_errors.InlineBudgetExceeded):  # the inline budget is still a count
            pol.evaluate("loop/spin", {"n": 100_000}, inline=True)
        assert pol.evaluate("loop/spin", {"n": 10}) is UNDEFINED
    finally:
        pol.close()
    assert pol.lane.pool is None


def test_a_runaway_on_the_lane_fails_as_on_the_fuel_lane_under_any_load(files):
    """As test_wasm_inline's runaway test, with the lane on: a loop stops at its deadline there, and
    running out of memory is answered by the fuel lane's count, so the same error kind every time."""
    pol = _with_lane(files, pool_size=8, timeout=1.0, memory_limit=24 << 20)
    try:
        assert _kinds(pol, "loop/spin", {"n": 100_000}, 8) == {"DeadlineExceeded"}
        assert _kinds(pol, "loop/grow", {"n": 2000}, 8) == {"DeadlineExceeded"}
        assert pol.lane is not None and pol.lane.pool is not None and pol.lane.pool.discarded > 0
    finally:
        pol.close()
    small = _with_lane(files, pool_size=8, timeout=1.0, memory_limit=2 << 20)
    try:
        assert _kinds(small, "loop/grow", {"n": 400}, 8) == {"OutOfMemory"}
        assert small.pool.discarded > 0  # answered there, after the lane's instance ran out
        assert small.evaluate("loop/cheap", {"user": "alice"}) is True
    finally:
        small.close()


def test_no_lane_where_a_second_run_could_repeat_a_side_effect_nor_in_the_load_check(files, opa_bin):
    sends = 'package s\nimport rego.v1\nr := http.send({"method": "GET", "url": input.url}).status_code\n'
    pol = policy_from_files(bundle_files(build_wasm_bundle({"s.rego": sends}, ["s/r"])), fuel_free_lane=True)
    try:
        assert pol.may_block and pol.lane is None
    finally:
        pol.close()
    with load_check():
        checked = policy_from_files(files, fuel_free_lane=True, pool_size=1)
        try:
            assert checked.lane is None
        finally:
            checked.close()


PRINTS = """package noisy
import rego.v1

# prints, then keeps n*n elements: runs out of a small memory cap
grow := n if {
  print("growing", input.n)
  n := count([x | some i in numbers.range(1, input.n); some j in numbers.range(1, input.n); x := i * j])
}
"""


def test_a_print_before_running_out_of_memory_is_printed_once(opa_bin):
    """Out of memory on the lane is answered by a second run on the fuel lane; what the policy
    printed is that run's, not both runs' (each line came out twice)."""
    files = bundle_files(build_wasm_bundle({"p.rego": PRINTS}, ["noisy/grow"], flags=("--wasm-include-print",)))
    printed: list[str] = []
    pol = _with_lane(files, pool_size=2, timeout=2.0, memory_limit=2 << 20, host=HostConfig(on_print=printed.append))
    try:
        with pytest.raises(wasm_errors.OutOfMemory):
            pol.evaluate("noisy/grow", {"n": 400})
        assert pol.pool.discarded > 0  # the fuel lane answered it (and dropped its instance)
        assert [line for line in printed if "growing" in line] == ["growing 400"], printed
        printed.clear()
        assert pol.evaluate("noisy/grow", {"n": 3}) == 9  # answered on the lane, printed once
        assert [line for line in printed if "growing" in line] == ["growing 3"], printed
    finally:
        pol.close()
