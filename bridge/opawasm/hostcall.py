"""The host-call path: what runs when a policy calls into Python, and how values cross over.

The guest imports `opa_builtin0..4` (a builtin with 0-4 arguments), `opa_abort` and
`opa_println`; `callback` makes the C callback for each. A builtin's arguments are read straight
from the guest's value structs (`guestvalues`); its result goes back through `put_value`. An
exception in a host function is kept on the instance (`pending`) and re-raised when the guest
call returns, so it never turns into a result.

Kept apart from `runtime` (the instance: store, memory, calls) so the per-call path can be tuned
without touching instance construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.opawasm.capi import new_trap
from bridge.opawasm.errors import EvaluationError, PolicyAbort, WasmError
from bridge.opawasm.values import decode_value, encode_value

if TYPE_CHECKING:  # the instance calls into this module; only the annotations need its class
    from bridge.opawasm.runtime import Instance

HostCallback = Callable[[Any, Any, Any, int], int]


def callback(inst: Instance, name: str) -> HostCallback | None:
    """The host function for the import `env.<name>`, or None when the evaluator has none."""
    if name.startswith("opa_builtin") and name[-1:].isdigit():
        return _builtin_cb(inst, int(name[-1]))
    if name == "opa_abort":
        return lambda _env, _caller, args, _n: _abort(inst, args[0].i32)
    if name == "opa_println":
        return lambda _env, _caller, args, _n: _println(inst, args[0].i32)
    return None


def fail(inst: Instance, exc: BaseException) -> int:
    inst.pending = exc
    return new_trap(str(exc))


def _builtin_cb(inst: Instance, arity: int) -> HostCallback:
    def cb(_env: Any, caller: Any, args: Any, _n: int) -> int:
        try:
            ids = tuple(args[2 + i].i32 for i in range(arity))
            if inst.dispatch is None:
                raise PolicyAbort("builtin called before dispatch is ready")
            args[0].i32 = inst.dispatch(inst, args[0].i32, ids)
            return 0
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a trap, never a result
            return fail(inst, exc)

    return cb


def _abort(inst: Instance, addr: int) -> int:
    try:
        msg = inst.read_cstr(addr).decode("utf-8", "replace")
    except WasmError:
        msg = "(unreadable abort message)"
    if msg.startswith("opa_malloc"):
        return fail(inst, inst._out_of_memory(f"policy ran out of memory (cap {inst.memory_limit} bytes): {msg}"))
    return fail(inst, PolicyAbort(f"policy aborted: {msg}"))


def _println(inst: Instance, addr: int) -> int:
    try:
        text = inst.read_cstr(addr).decode("utf-8", "replace")
        if inst.on_print is not None:
            inst.on_print(text)
        return 0
    except BaseException as exc:  # noqa: BLE001 - a failing print sink fails the evaluation, as a trap
        return fail(inst, exc)


def dump_value(inst: Instance, value_addr: int) -> Any:
    """A guest value through `opa_value_dump` (for the types `guestvalues` does not read itself)."""
    s = inst.call("opa_value_dump", value_addr)
    return decode_value(inst.read_cstr(s))


def put_value(inst: Instance, value: Any) -> int:
    """`value` as a guest value; its address."""
    if value is True or value is False:
        interned = inst.bools[value]
        if interned:
            return interned
    raw = encode_value(value)
    n = len(raw)
    if n <= inst.scratch_size and inst.scratch:
        # the parser copies what it keeps, so a fixed scratch buffer below the evaluation heap
        # saves the opa_malloc call
        addr = inst.scratch
    else:
        addr = inst.call("opa_malloc", n)
        inst.ensure(addr + n)
    inst.write(addr, raw)
    v = inst.call("opa_value_parse", addr, n)
    if v == 0:
        raise EvaluationError(f"opa_value_parse rejected a builtin result: {raw[:200]!r}")
    return v
