"""The native host-call fast path (`bridge/opawasm/native/hostfast.c`): `glob.match` answered in C
where the pattern's literal text decides. Its answers equal the real `opa eval`'s and the Python
path's on the whole glob table of `test_wasm_hostglobs`; it answers most of a route table's calls;
a custom builtin in glob.match's place is never bypassed; and a call whose value addresses point
outside the guest's memory is handed to Python, never read."""

from __future__ import annotations

import ctypes
from typing import Any

from bridge.opawasm import WasmPolicy, hostfast
from bridge.opawasm.capi import VAL_SIZE, host_callback
from bridge.opawasm.hostroute import host_name
from tests.test_wasm_hostglobs import PATTERNS, _cases, build_routed
from tests.wasm_helpers import opa_eval_one

ROUTES = """package routes

import rego.v1

allowed contains r.id if {
	some r in input.routes
	glob.match(r.path, ["/"], input.path)
}
"""


def _counts(policy: WasmPolicy) -> tuple[int, int]:
    answered = passed = 0
    for inst in policy.pool._idle:
        assert inst.fast is not None, "the native fast path is not linked in (was the extension built?)"
        a, p = hostfast.counts(inst.fast)
        answered, passed = answered + a, passed + p
    return answered, passed


def test_the_extension_is_built_and_linked() -> None:
    # `make test` installs with setuptools, which builds it: a build that failed silently would
    # leave every call on the Python path, and this would say so
    assert hostfast.available(), "bridge.opawasm._hostfast is missing: reinstall (pip install -e .) with a C compiler"


def test_answers_equal_opa_eval_and_the_python_path() -> None:
    cases = _cases()
    want = opa_eval_one({"t.rego": PATTERNS}, None, "data.t", cases)["value"]["globs"]
    native = build_routed({"t.rego": PATTERNS}, ["t", "t/one"])
    got = native.evaluate("t", cases, timeout=60)["globs"]
    answered, passed = _counts(native)
    python = build_routed({"t.rego": PATTERNS}, ["t", "t/one"], native_hostcalls=False)
    assert got == want == python.evaluate("t", cases, timeout=60)["globs"]
    assert _counts(python)[0] == 0
    # both kinds of calls were made: answered in C (literal patterns, refused prefixes) and in Python
    assert answered > 500 and passed > 500, (answered, passed)


def test_a_route_table_is_mostly_answered_in_c() -> None:
    routes = [{"id": i, "path": f"/api/v{i % 3}/{name}/*"} for i, name in enumerate(["users", "orders", "reports", "admin"] * 10)]
    routes += [{"id": 100, "path": "/api/v1/orders/**"}, {"id": 101, "path": "/health"}, {"id": 102, "path": "/api/v1/{orders,users}/*"}]
    policy = build_routed({"routes.rego": ROUTES}, ["routes/allowed"])
    for path in ("/api/v1/orders/42", "/health", "/api/v2/admin/x", "/nope"):
        inp = {"routes": routes, "path": path}
        want = opa_eval_one({"routes.rego": ROUTES}, None, "data.routes.allowed", inp)["value"]
        assert policy.evaluate("routes/allowed", inp) == want
    answered, passed = _counts(policy)
    assert answered >= 4 * 38 and passed <= 4 * 5, (answered, passed)  # the braces always take the Python path


def test_a_custom_builtin_in_glob_matchs_place_is_always_called() -> None:
    calls: list[Any] = []

    def every_glob(_ctx: Any, pattern: Any, delimiters: Any, value: Any) -> bool:
        calls.append(pattern)
        return True

    policy = build_routed({"routes.rego": ROUTES}, ["routes/allowed"], custom_builtins={host_name("glob.match"): every_glob})
    assert policy.evaluate("routes/allowed", {"routes": [{"id": 1, "path": "/a"}, {"id": 2, "path": "/b*"}], "path": "/x"}) == [1, 2]
    assert sorted(calls) == ["/a", "/b*"]


def test_addresses_outside_the_guests_memory_go_to_python_unread() -> None:
    """Calls the C callback directly with value addresses a broken or hostile module could pass:
    past the end of memory, a string whose bytes run past it, a delimiter array of 2^31 elements.
    Each goes to the Python callback (here: a recorder), and nothing is read out of bounds."""
    policy = build_routed({"routes.rego": ROUTES}, ["routes/allowed"])
    (inst,) = policy.pool._idle
    env = inst.fast
    assert env is not None and env.glob_id >= 0
    size = inst.mem_size_now()
    handed: list[int] = []
    recorder = host_callback(lambda _env, _caller, slots, _n: handed.append(slots) or 0)
    env.fallback = ctypes.cast(recorder, ctypes.c_void_p).value
    scratch = inst.scratch

    def string_at(addr: int, length: int, ptr: int) -> int:
        inst.write(addr, bytes([4, 0, 0, 0]) + length.to_bytes(4, "little") + ptr.to_bytes(4, "little"))
        return addr

    good = string_at(scratch, 1, scratch + 64)
    inst.write(scratch + 64, b"/")
    huge_array = scratch + 128
    inst.write(huge_array, bytes([5, 0, 0, 0]) + (scratch + 256).to_bytes(4, "little") + (2**31).to_bytes(4, "little"))
    cases = [
        (size + 16, good, good),                              # the pattern's struct past the end
        (good, good, size - 4),                               # the value's struct straddles the end
        (string_at(scratch + 16, 100, size - 50), good, good),  # the pattern's bytes run past the end
        (good, huge_array, good),                             # delimiters: 2^31 elements
        (0, good, good),                                      # a null address
    ]
    call = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(hostfast._CALLBACK)
    for pattern, delimiters, value in cases:
        slots = _slots(env.glob_id, 0, pattern, delimiters, value)
        assert call(ctypes.addressof(env), None, ctypes.addressof(slots), 5) is None
    assert len(handed) == len(cases)
    # a plain call is answered without the fallback: "/" does not start with "/x"
    inst.write(scratch + 80, b"/x*")
    inst.write(scratch + 160, bytes([1]) + bytes(15))  # null delimiters
    slots = _slots(env.glob_id, 0, string_at(scratch + 32, 3, scratch + 80), scratch + 160, good)
    assert call(ctypes.addressof(env), None, ctypes.addressof(slots), 5) is None
    assert len(handed) == len(cases)
    assert int.from_bytes(bytes(slots[:4]), "little") == inst.bools[False]


def _slots(*values: int) -> ctypes.Array[ctypes.c_uint8]:
    slots = (ctypes.c_uint8 * (VAL_SIZE * 5))()
    for i, v in enumerate(values):
        ctypes.memmove(ctypes.addressof(slots) + i * VAL_SIZE, int(v).to_bytes(4, "little", signed=True), 4)
    return slots
