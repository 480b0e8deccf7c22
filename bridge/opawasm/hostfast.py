"""The native host-call fast path (`native/hostfast.c`): `glob.match` answered in C, without the
Python callback, where the pattern's literal text alone decides (a wildcard-free pattern, or a
literal prefix the value does not start with); everything else reaches the Python callback as
before. The C file says exactly when it answers and why the answers are the builtin's.

The extension is built by setuptools at install (`setup.py`, `pip install -e .`); it is optional:
without a C compiler the install still succeeds and every call takes the Python path (same
answers, ~4-5 µs more per call). `LoadOptions(native_hostcalls=False)` leaves it unarmed (every
call handed to Python), for comparisons.

An instance wires it in two steps: `glob_import` at link time (the guest's `opa_builtin3` import
becomes the C callback, with the Python one behind it), then `arm` once the module's builtin ids
and interned booleans are known. Until armed, the C callback hands every call to Python.
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _bindings

from bridge.opawasm.capi import VAL_SIZE, host_func

try:
    from bridge.opawasm import _hostfast  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the Python path only
    _hostfast = None

_vp = ctypes.c_void_p


class Env(ctypes.Structure):
    """`struct env` of hostfast.c, field for field (checked against its size at import)."""

    _fields_ = [
        ("fallback", _vp), ("memory_data", _vp), ("memory_size", _vp), ("context", _vp),
        ("memory", ctypes.c_uint8 * 32), ("glob_id", ctypes.c_int32),
        ("true_value", ctypes.c_uint32), ("false_value", ctypes.c_uint32),
        ("answered", ctypes.c_uint64), ("passed", ctypes.c_uint64),
    ]


_CALLBACK = _MEMORY_DATA = _MEMORY_SIZE = 0
if _hostfast is not None:
    # a stale build of another layout, or a wasmtime whose argument slots are not the 16 bytes the
    # C file reads: never call it
    if _hostfast.env_size() != ctypes.sizeof(Env) or VAL_SIZE != 16:
        _hostfast = None
    else:
        _CALLBACK = _hostfast.callback_address()
        _MEMORY_DATA = ctypes.cast(_bindings._wasmtime_memory_data, _vp).value or 0
        _MEMORY_SIZE = ctypes.cast(_bindings._wasmtime_memory_data_size, _vp).value or 0


def available() -> bool:
    """Whether the extension is built (and of this layout): instances link the fast path in."""
    return bool(_CALLBACK and _MEMORY_DATA and _MEMORY_SIZE)


def glob_import(context: Any, ty: wasmtime.FuncType, fallback: Any) -> tuple[wasmtime.Func, Env]:
    """The `opa_builtin3` import as the C callback in front of `fallback` (a `capi.host_callback`),
    and its environment, which the caller keeps alive as long as the store and completes with
    `attach` and `arm`."""
    env = Env(glob_id=-1)
    env.fallback = ctypes.cast(fallback, _vp).value
    return host_func(context, ty, _vp(_CALLBACK), ctypes.byref(env)), env


def attach(env: Env, context: int | None, memory: wasmtime.Memory) -> None:
    """Where the guest's memory is: the store's context and the memory's handle."""
    if not context:
        raise RuntimeError("hostfast: a store without a context")
    handle = memory._memory
    size = ctypes.sizeof(handle)
    if size > ctypes.sizeof(env.memory):
        raise RuntimeError(f"wasmtime_memory_t is {size} bytes, hostfast.c keeps {ctypes.sizeof(env.memory)}")
    env.memory_data, env.memory_size, env.context = _MEMORY_DATA, _MEMORY_SIZE, context
    ctypes.memmove(env.memory, ctypes.addressof(handle), size)


def arm(env: Env, glob_id: int, true_value: int, false_value: int) -> None:
    """Answer `glob.match` (builtin `glob_id`; -1: never) with these interned booleans (0: never)."""
    env.glob_id, env.true_value, env.false_value = glob_id, true_value, false_value


def counts(env: Env) -> tuple[int, int]:
    """(calls answered in C, calls handed to Python) so far."""
    return env.answered, env.passed
