"""wasmtime's C API, re-typed for the evaluator's hot path.

Why not `Func.__call__`: it looks up the function type, converts every argument through `Val` and
allocates result arrays on every call, which for `opa_eval`'s seven arguments costs many times the
evaluation of a simple policy. Instead each export is called with `wasmtime_func_call_unchecked`
on a preallocated `wasmtime_val_raw` array whose argument slots are packed with one
`struct.pack_into`; function handles and the store's context pointer are looked up once.

The C entry points are re-typed to take plain integers, so ctypes skips its per-argument pointer
type checks. They stay CFUNCTYPE, so the GIL is released while wasm runs (the epoch ticker and
other threads keep going).

Host imports are made with `wasmtime_func_new_unchecked` and our own ctypes callbacks, so an
exception in a host function is recorded on its instance (thread-safe) instead of in wasmtime-py's
process-global slot.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _bindings

_vp, _sz = ctypes.c_void_p, ctypes.c_size_t


def _address(fn: Any) -> int:
    addr = ctypes.cast(fn, _vp).value
    if not addr:
        raise ImportError(f"wasmtime's C library lacks {fn!r}")
    return addr


call_unchecked = ctypes.CFUNCTYPE(_vp, _vp, _vp, _vp, _sz, _vp)(_address(_bindings._wasmtime_func_call_unchecked))
set_epoch_deadline = ctypes.CFUNCTYPE(None, _vp, ctypes.c_uint64)(
    _address(_bindings._wasmtime_context_set_epoch_deadline)
)
# returns a wasmtime_error_t* (only when the engine does not consume fuel, which ours always does)
set_fuel = ctypes.CFUNCTYPE(_vp, _vp, ctypes.c_uint64)(_address(_bindings._wasmtime_context_set_fuel))
_get_fuel = ctypes.CFUNCTYPE(_vp, _vp, _vp)(_address(_bindings._wasmtime_context_get_fuel))


def fuel_used(context: int | None, start: int) -> int:
    """The wasm instructions run in the store behind `context` since it was given `start` fuel."""
    left = ctypes.c_uint64()
    return 0 if _get_fuel(context, ctypes.byref(left)) else start - left.value

# Every call uses one array of this many slots for arguments and results: the most any export of
# the OPA ABI takes (opa_eval: 7).
SLOTS = 8
_VAL_SIZE = VAL_SIZE = ctypes.sizeof(_bindings.wasmtime_val_raw)
HostCallback = Callable[[int, int, int, int], int]
_HOST_CALLBACK = _bindings.wasmtime_func_unchecked_callback_t
# The same C signature with every argument a plain integer: wasmtime-py's prototype makes ctypes
# build three pointer objects per call, which the host-call path never needs (it reads the
# argument slots by address).
_RAW_CALLBACK = ctypes.CFUNCTYPE(_vp, _vp, _vp, _vp, _sz)
_NO_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # a NULL function pointer


def new_slots() -> ctypes.Array[Any]:
    return (_bindings.wasmtime_val_raw * SLOTS)()


def packer(n: int) -> struct.Struct:
    """Packs n >= 1 i32 arguments into the first n slots (each slot is a wasmtime_val_raw union)."""
    pad = f"{_VAL_SIZE - 4}x"
    return struct.Struct("<" + (f"i{pad}" * n)[: -len(pad)])


_PACKERS = [packer(n) if n else None for n in range(SLOTS)]


class Export:
    """An exported function, ready for `call_unchecked`: its handle's address and argument packer."""

    __slots__ = ("_keep", "n", "pack", "ref")

    def __init__(self, func: wasmtime.Func, nparams: int) -> None:
        self._keep = func  # `ref` points into it
        self.ref = ctypes.addressof(func._func)
        self.n = nparams
        self.pack = _PACKERS[nparams]


def host_func(context: Any, ty: wasmtime.FuncType, callback: Any, env: Any = None) -> wasmtime.Func:
    """A host function of type `ty` in the store behind `context`, calling `callback` (a ctypes
    callback, or a C function's address as a `c_void_p`) with `env` as its first argument. The
    caller keeps both alive as long as the store: the store holds only their addresses."""
    out = _bindings.wasmtime_func_t()
    fn = ctypes.cast(callback, _HOST_CALLBACK)
    _bindings.wasmtime_func_new_unchecked(context, ty.ptr(), fn, env, _NO_FINALIZER, ctypes.byref(out))
    return wasmtime.Func._from_raw(out)


def host_callback(fn: HostCallback) -> Any:
    """`fn(env, caller, args, nargs) -> trap address or 0` as a C callback for `host_func`; every
    argument arrives as an integer (`args`: the address of the `wasmtime_val_raw` slots)."""
    return _RAW_CALLBACK(fn)


def new_trap(message: str) -> int:
    """A trap carrying `message`: what a host callback returns to make the guest trap."""
    msg = message.encode("utf-8", "replace")
    trap = _bindings.wasmtime_trap_new(msg, len(msg))
    return ctypes.cast(trap, _vp).value or 0


class TrapSlot:
    """The `wasm_trap_t*` out-parameter of every call, reused across calls."""

    __slots__ = ("ptr", "ref")

    def __init__(self) -> None:
        self.ptr = ctypes.POINTER(_bindings.wasm_trap_t)()
        self.ref = ctypes.addressof(self.ptr)

    def take(self, err: int | None) -> tuple[str, wasmtime.TrapCode | None]:
        """The message and trap code of a failed call (`err`: its wasmtime_error_t*, if any), taking
        ownership of the trap through a copy of the pointer and zeroing the slot in place: an outer
        call (we may be inside a host function) still refers to the slot."""
        trap = ctypes.cast(self.ptr, ctypes.POINTER(_bindings.wasm_trap_t)) if self.ptr else None
        ctypes.memset(self.ref, 0, ctypes.sizeof(_vp))
        if trap:
            t = wasmtime.Trap._from_ptr(trap)
            return t.message, t.trap_code
        if not err:
            return "the call failed without a trap or an error", None
        e = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(_bindings.wasmtime_error_t)))
        return str(e), None
