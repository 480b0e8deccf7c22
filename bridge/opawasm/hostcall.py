"""The host-call path: what runs when a policy calls into Python, and how values cross over.

The guest imports `opa_builtin0..4` (a builtin with 0-4 arguments), `opa_abort` and
`opa_println`; `callback` makes the C callback for each. A builtin's arguments are read straight
from the guest's value structs (`guestvalues`); its result goes back through `put_value`. An
exception in a host function is kept on the instance (`pending`) and re-raised when the guest
call returns, so it never turns into a result.

Where the microseconds went, and what this module does instead (benchmarks/README.md, "host-call
overhead"):
- The C callback takes plain integers (`capi.host_callback`): the argument slots are read with one
  `string_at` and one `struct.unpack`, the result written with one `memmove`; no ctypes pointer
  or struct objects per call.
- Strings and integers, the results of `sprintf`, the hash, encoding and time builtins, are
  written as guest value structs into a per-evaluation arena (the instance's scratch buffer below
  the evaluation heap), so no guest call parses them. Strings are written as OPA's *interned*
  strings (type 8, as the compiled policy's own constants), which `opa_value_free` skips;
  integers as numbers with their digits as text, as the parser makes them (free flag off), which
  nothing frees either: compiled policies never free or modify a value, and the library frees
  only the temporaries it allocates itself. Other results (arrays,
  objects, sets, floats) are written as text into the arena and parsed by one `opa_value_parse`
  call, which copies what it keeps. Laying composites out in Python as well was tried (objects
  need the library's FNV bucket layout) and lost: ~1 µs of Python per node against ~4 µs for the
  whole parse call, so JWT's 3-element result with two objects costs more that way.
- The arena starts over with each evaluation (`start_evaluation`): the guest heap is reset
  between evaluations, and so is every value made for one. When it is full, a result goes to
  `opa_malloc`'d memory, which the heap reset reclaims.

Kept apart from `runtime` (the instance: store, memory, calls) so the per-call path can be tuned
without touching instance construction.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any, Protocol

from bridge.opawasm.capi import VAL_SIZE, HostCallback, new_trap
from bridge.opawasm.errors import EvaluationError, PolicyAbort, WasmError
from bridge.opawasm.values import decode_value, encode_value


class Instance(Protocol):
    """What the host-call path uses of `runtime.Instance` (which imports this module, so this one
    names only the attributes it needs instead of importing it back)."""

    pending: BaseException | None
    dispatch: Callable[[Any, int, tuple[int, ...]], int] | None
    on_print: Callable[[str], None] | None
    memory_limit: int
    base: int
    scratch: int
    scratch_size: int
    arena: int
    view: memoryview
    bools: dict[bool, int]

    def call(self, name: str, *params: int) -> int: ...
    def read_cstr(self, addr: int) -> bytes: ...
    def ensure(self, end: int) -> None: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def _out_of_memory(self, message: str) -> BaseException: ...

_string_at = ctypes.string_at
_memmove = ctypes.memmove
_pack_i32 = struct.Struct("<i").pack
_STRING_HEAD = struct.Struct("<BBxxII")  # opa_string_t: type, free, len, pointer to the bytes
# opa_number_t with a text representation: type, repr (2: ref), pointer to the digits, their
# length, free (0: not the allocator's). The parser makes every number this way; the library's
# int64 representation differs in places (it prints INT64_MIN wrong, and compares and adds
# differently), so results must not use it.
_NUMBER_REF = struct.Struct("<BBxxxxxxIIBxxxxxxx")
_INTERNED_STRING, _NUMBER, _REPR_REF = 8, 3, 2
_BIG = 10**4000  # past Python's digit limit for printing an int: the text path's error


def _slots_reader(arity: int) -> tuple[int, Callable[[bytes], tuple[int, ...]]]:
    """How many bytes of the argument slots to read, and the unpacker of (builtin id, args...):
    slot 0 holds the builtin's id, slot 1 the (unused) context, slots 2.. the argument values."""
    pad = f"{VAL_SIZE - 4}x"
    fmt = "<i" + pad + f"{VAL_SIZE}x" + "".join(f"i{pad}" for _ in range(arity))
    fmt = fmt[: -len(pad)] if arity else "<i"
    s = struct.Struct(fmt)
    return s.size, s.unpack


def callback(inst: Instance, name: str) -> HostCallback | None:
    """The host function for the import `env.<name>`, or None when the evaluator has none."""
    if name.startswith("opa_builtin") and name[-1:].isdigit():
        return _builtin_cb(inst, int(name[-1]))
    if name == "opa_abort":
        return lambda _env, _caller, args, _n: _abort(inst, _first_i32(args))
    if name == "opa_println":
        return lambda _env, _caller, args, _n: _println(inst, _first_i32(args))
    return None


def _first_i32(args: int) -> int:
    return int(ctypes.c_int32.from_address(args).value)


def fail(inst: Instance, exc: BaseException) -> int:
    inst.pending = exc
    return new_trap(str(exc))


def _builtin_cb(inst: Instance, arity: int) -> HostCallback:
    size, unpack = _slots_reader(arity)

    def cb(_env: int, _caller: int, args: int, _n: int) -> int:
        try:
            slots = unpack(_string_at(args, size))
            dispatch = inst.dispatch
            if dispatch is None:
                raise PolicyAbort("builtin called before dispatch is ready")
            _memmove(args, _pack_i32(dispatch(inst, slots[0], slots[1:])), 4)
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


def start_evaluation(inst: Instance) -> None:
    """Start the result arena over: called at the first host call of an evaluation."""
    inst.arena = (inst.scratch + 7) & ~7 if inst.scratch else 0


def _alloc(inst: Instance, n: int) -> int:
    """`n` bytes that live until the end of the evaluation: from the arena, else from the guest heap."""
    at = inst.arena
    if at and at + n <= inst.scratch + inst.scratch_size:
        inst.arena = (at + n + 7) & ~7
        return at
    at = inst.call("opa_malloc", n)
    inst.ensure(at + n)
    return at


def put_value(inst: Instance, value: Any) -> int:
    """`value` as a guest value; its address."""
    t = type(value)
    if t is bool:
        interned = inst.bools[value]
        if interned:
            return interned
    elif not inst.arena:
        pass  # at load time (the interned booleans are looked up through the parser)
    elif t is str:
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: the text path below refuses it with the encoder's message
        else:
            n = len(raw)
            at = _alloc(inst, 12 + n)
            inst.view[at : at + 12 + n] = _STRING_HEAD.pack(_INTERNED_STRING, 0, n, at + 12) + raw
            return at
    elif t is int and -_BIG < value < _BIG:
        digits = b"%d" % value
        n = len(digits)
        at = _alloc(inst, 24 + n)
        inst.view[at : at + 24 + n] = _NUMBER_REF.pack(_NUMBER, _REPR_REF, at + 24, n, 0) + digits
        return at
    return _parse_value(inst, encode_value(value))


def parse_text(inst: Instance, raw: bytes) -> int:
    """A value given in OPA's value text (as `encode_value` writes it) as a guest value; its address."""
    return _parse_value(inst, raw)


def _parse_value(inst: Instance, raw: bytes) -> int:
    n = len(raw)
    at = inst.arena
    if not (at and at + n <= inst.scratch + inst.scratch_size):
        at = inst.call("opa_malloc", n)
        inst.ensure(at + n)
    # else the text stays above the arena's cursor: the parser copies what it keeps
    inst.write(at, raw)
    v = inst.call("opa_value_parse", at, n)
    if v == 0:
        raise EvaluationError(f"opa_value_parse rejected a builtin result: {raw[:200]!r}")
    return v
