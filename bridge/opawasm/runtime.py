"""One OPA-WASM module on wasmtime, driven through the low-level (unchecked) call path.

Why not `Func.__call__`: it looks up the function type, converts every argument through `Val`
and allocates result arrays on every call (~150 µs for `opa_eval`'s seven arguments). Here each
export is called with `wasmtime_func_call_unchecked` on a preallocated `wasmtime_val_raw` array
whose argument slots are packed in one `struct.pack_into`; the function handles and the store
context pointer are looked up once. Input goes into linear memory with one `memmove`, the
result comes out with one `string_at` (the guest NUL-terminates it) and one msgspec decode.

Host imports (`opa_builtin0..4`, `opa_abort`, `opa_println`) are created with
`wasmtime_func_new_unchecked` and our own ctypes callbacks, so an exception in a host function
is recorded on the instance (thread-safe) instead of wasmtime-py's process-global slot.

Deadlines use epoch interruption: one daemon thread bumps the engine epoch every `TICK_S`;
each call sets its deadline in ticks. Host builtins check the same deadline themselves.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import wasmtime
from wasmtime import _bindings as B

from bridge.opawasm import errors as E
from bridge.opawasm.values import RegoSet, decode_value, encode_value

# Deadline resolution: a deadline fires between its time and two ticks later. Each tick wakes a
# Python thread that takes the GIL: at 2 ms an idle control plane burnt ~22 ms of CPU per second
# (and every tick can cut into a request on the loop thread); at 10 ms, ~8 ms per second.
TICK_S = 0.01
LOAD_DEADLINE_S = 30.0
PAGE = 65536
MIN_ABI_MINOR = 2

# The same C entry points as wasmtime-py's bindings, re-typed to take plain integers: ctypes then
# skips per-argument pointer type checks (~0.5 µs of a ~1.1 µs call). Still CFUNCTYPE, so the GIL
# is released while wasm runs (the epoch ticker and other threads keep going).
_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
_call_unchecked = ctypes.CFUNCTYPE(_vp, _vp, _vp, _vp, _sz, _vp)(ctypes.cast(B._wasmtime_func_call_unchecked, _vp).value)
_set_epoch_deadline = ctypes.CFUNCTYPE(None, _vp, ctypes.c_uint64)(ctypes.cast(B._wasmtime_context_set_epoch_deadline, _vp).value)
_unpack_i32 = struct.Struct("<i").unpack_from
_unpack_u32x2 = struct.Struct("<II").unpack_from
_unpack_u32x3 = struct.Struct("<III").unpack_from
_unpack_i64 = struct.Struct("<q").unpack_from
SCRATCH = 64 * 1024
_string_at = ctypes.string_at
_memmove = ctypes.memmove
_val_raw = B.wasmtime_val_raw
_VAL_SIZE = ctypes.sizeof(_val_raw)
_json_decode = msgspec.json.decode

_HOST_CB = B.wasmtime_func_unchecked_callback_t
_NO_FINALIZER = ctypes.cast(None, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


def _packer(n: int) -> struct.Struct:
    pad = f"{_VAL_SIZE - 4}x"
    return struct.Struct("<" + (f"i{pad}" * n)[: -len(pad)])


_PACK = [_packer(n) if n else None for n in range(8)]


class _Engine:
    """The process-wide engine (epoch interruption on) and its epoch ticker."""

    _lock = threading.Lock()
    _engine: wasmtime.Engine | None = None

    @classmethod
    def get(cls) -> wasmtime.Engine:
        if cls._engine is None:
            with cls._lock:
                if cls._engine is None:
                    cfg = wasmtime.Config()
                    cfg.epoch_interruption = True
                    cfg.memory_may_move = False
                    cfg.cranelift_opt_level = "speed"
                    # no compile thread pool: it would not survive fork() and compiles hang in the child
                    cfg.parallel_compilation = False
                    engine = wasmtime.Engine(cfg)
                    t = threading.Thread(target=cls._tick, args=(engine,), name="wasm-epoch", daemon=True)
                    t.start()
                    cls._engine = engine
        return cls._engine

    @staticmethod
    def _tick(engine: wasmtime.Engine) -> None:
        inc = B._wasmtime_engine_increment_epoch
        ptr = engine.ptr()
        while True:
            time.sleep(TICK_S)
            inc(ptr)


def _after_fork_in_child() -> None:
    # the ticker thread does not survive fork(): a child starts over with its own engine and ticker
    # (policies loaded before the fork keep working in the child, but without deadlines: reload them)
    global _compiled_lock
    _Engine._engine = None
    _Engine._lock = threading.Lock()
    _compiled_lock = threading.Lock()
    _compiled.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def engine() -> wasmtime.Engine:
    return _Engine.get()


def deadline_ticks(seconds: float) -> int:
    return max(1, math.ceil(seconds / TICK_S) + 1)


@dataclass
class CompiledPolicy:
    """A compiled policy.wasm (shared, thread-safe) and what was learned from it at load time."""

    module: wasmtime.Module
    abi: tuple[int, int]
    builtin_ids: dict[str, int] = field(default_factory=dict)
    entrypoints: dict[str, int] = field(default_factory=dict)
    memory_min_pages: int = 2


_compiled: OrderedDict[bytes, wasmtime.Module] = OrderedDict()
_compiled_lock = threading.Lock()
COMPILED_CACHE_SIZE = 8


def compile_policy(wasm: bytes) -> wasmtime.Module:
    """Compile (Cranelift, ~0.1-0.5 s) or reuse: a revision that changes only data.json reuses the
    module, so its hot swap costs an instantiation, not a compilation."""
    key = hashlib.sha256(wasm).digest()
    with _compiled_lock:
        mod = _compiled.get(key)
        if mod is not None:
            _compiled.move_to_end(key)
            return mod
    try:
        mod = wasmtime.Module(engine(), wasm)
    except wasmtime.WasmtimeError as exc:
        raise E.BundleLoadError(f"policy.wasm: not a valid wasm module: {exc}") from None
    with _compiled_lock:
        _compiled[key] = mod
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return mod


def _trap_message(trap_ptr: Any, err_ptr: Any) -> tuple[str, wasmtime.TrapCode | None]:
    if trap_ptr:
        t = wasmtime.Trap._from_ptr(trap_ptr)
        return t.message, t.trap_code
    e = wasmtime.WasmtimeError._from_ptr(err_ptr)
    return str(e), None


class _Export:
    __slots__ = ("_keep", "n", "pack", "ref")

    def __init__(self, func: wasmtime.Func, nparams: int) -> None:
        self._keep = func
        self.ref = ctypes.addressof(func._func)
        self.n = nparams
        self.pack = _PACK[nparams]


class Instance:
    """One store + instance of a policy. Not thread-safe: the pool hands it to one caller at a time."""

    def __init__(
        self,
        module: wasmtime.Module,
        *,
        memory_limit: int,
        dispatch: Callable[[Instance, int, tuple[int, ...]], int] | None = None,
        on_print: Callable[[str], None] | None = None,
    ) -> None:
        self.module = module
        memory_limit = min(memory_limit, 4 << 30)  # wasm32
        self.memory_limit = memory_limit
        self.broken: str | None = None
        self.pending: BaseException | None = None
        self.dispatch = dispatch
        self.on_print = on_print
        self.store = store = wasmtime.Store(engine())
        store.set_limits(memory_size=memory_limit)
        self._ctx_ptr = store._context()
        self._ctx = ctypes.cast(self._ctx_ptr, ctypes.c_void_p).value
        _set_epoch_deadline(self._ctx, 1 << 40)
        self._args = (_val_raw * 8)()
        self._args_addr = ctypes.addressof(self._args)
        self._argbuf = memoryview(self._args).cast("B")
        self._trap = ctypes.POINTER(B.wasm_trap_t)()
        self._trap_ref = ctypes.addressof(self._trap)
        self.scratch = 0
        self._bools: dict[bool, int] = {True: 0, False: 0}
        self._callbacks: list[Any] = []

        imports: list[Any] = []
        for imp in module.imports:
            if imp.module != "env":
                raise E.BundleLoadError(f"policy.wasm: unexpected import {imp.module}.{imp.name}")
            if imp.name == "memory":
                mt = imp.type
                lim_max = max(mt.limits.min, memory_limit // PAGE)
                self.memory = wasmtime.Memory(store, wasmtime.MemoryType(wasmtime.Limits(mt.limits.min, lim_max)))
                imports.append(self.memory)
            elif imp.name.startswith("opa_builtin") and imp.name[-1].isdigit():
                imports.append(self._host(imp.type, self._builtin_cb(int(imp.name[-1]))))
            elif imp.name == "opa_abort":
                imports.append(self._host(imp.type, self._abort_cb))
            elif imp.name == "opa_println":
                imports.append(self._host(imp.type, self._println_cb))
            else:
                raise E.BundleLoadError(f"policy.wasm: unexpected import env.{imp.name}")
        try:
            self.instance = wasmtime.Instance(store, module, imports)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise E.BundleLoadError(f"policy.wasm: cannot instantiate: {exc}") from None
        exports = self.instance.exports(store)
        if not hasattr(self, "memory"):
            mem = exports.get("memory") if hasattr(exports, "get") else exports["memory"]
            self.memory = mem  # type: ignore[assignment]
        self.base = ctypes.addressof(self.memory.data_ptr(store).contents)
        self.mem_size = self.memory.data_len(store)
        # A view over the whole memory cap: the engine reserves it up front and memory never moves
        # (memory_may_move=False), so addresses stay valid; reads are bounds-checked against mem_size.
        self.view = memoryview((ctypes.c_ubyte * max(memory_limit, self.mem_size)).from_address(self.base)).cast("B")
        self._exports: dict[str, _Export] = {}
        for name, nparams in (
            ("opa_eval", 7), ("opa_malloc", 1), ("opa_heap_ptr_get", 0), ("opa_heap_ptr_set", 1),
            ("opa_json_parse", 2), ("opa_value_parse", 2), ("opa_value_dump", 1), ("opa_json_dump", 1),
            ("builtins", 0), ("entrypoints", 0), ("opa_heap_blocks_stash", 0),
        ):
            try:
                f = exports[name]
            except KeyError:
                continue
            if isinstance(f, wasmtime.Func):
                self._exports[name] = _Export(f, nparams)
        major = exports["opa_wasm_abi_version"] if "opa_wasm_abi_version" in _names(module) else None
        minor = exports["opa_wasm_abi_minor_version"] if "opa_wasm_abi_minor_version" in _names(module) else None
        self.abi = (
            major.value(store) if isinstance(major, wasmtime.Global) else 0,
            minor.value(store) if isinstance(minor, wasmtime.Global) else 0,
        )
        self.data_addr = 0
        self.eval_heap = 0
        self._eval = self._exports.get("opa_eval")

    def close(self) -> None:
        """Free the store now (not at the next GC cycle): used for discarded instances."""
        if self.store is None:
            return
        self.broken = self.broken or "closed"
        self.view = None  # type: ignore[assignment]
        self._exports.clear()
        self._eval = None
        self.instance = None  # type: ignore[assignment]
        self.memory = None  # type: ignore[assignment]
        store, self.store = self.store, None  # type: ignore[assignment]
        store.close()
        self._callbacks.clear()  # only after the store (which holds their function pointers) is gone
        self.dispatch = None

    # -- host functions ---------------------------------------------------------------------

    def _host(self, ty: wasmtime.FuncType, fn: Callable[..., int]) -> wasmtime.Func:
        cb = _HOST_CB(fn)
        self._callbacks.append(cb)
        out = B.wasmtime_func_t()
        B.wasmtime_func_new_unchecked(self._ctx_ptr, ty.ptr(), cb, None, _NO_FINALIZER, ctypes.byref(out))
        return wasmtime.Func._from_raw(out)

    def _fail(self, exc: BaseException) -> int:
        self.pending = exc
        msg = str(exc).encode("utf-8", "replace")
        trap = B.wasmtime_trap_new(msg, len(msg))
        return ctypes.cast(trap, ctypes.c_void_p).value or 0

    def _builtin_cb(self, arity: int) -> Callable[..., int]:
        def cb(_env: Any, caller: Any, args: Any, _n: int) -> int:
            try:
                ids = tuple(args[2 + i].i32 for i in range(arity))
                if self.dispatch is None:
                    raise E.PolicyAbort("builtin called before dispatch is ready")
                args[0].i32 = self.dispatch(self, args[0].i32, ids)
                return 0
            except BaseException as exc:  # noqa: BLE001 - every failure becomes a trap, never a result
                return self._fail(exc)

        return cb

    def _abort_cb(self, _env: Any, caller: Any, args: Any, _n: int) -> int:
        try:
            msg = self.read_cstr(args[0].i32).decode("utf-8", "replace")
        except E.WasmError:
            msg = "(unreadable abort message)"
        if msg.startswith("opa_malloc"):
            return self._fail(E.OutOfMemory(f"policy ran out of memory (cap {self.memory_limit} bytes): {msg}"))
        return self._fail(E.PolicyAbort(f"policy aborted: {msg}"))

    def _println_cb(self, _env: Any, caller: Any, args: Any, _n: int) -> int:
        try:
            text = self.read_cstr(args[0].i32).decode("utf-8", "replace")
            if self.on_print is not None:
                self.on_print(text)
            return 0
        except BaseException as exc:  # noqa: BLE001
            return self._fail(exc)

    # -- memory -----------------------------------------------------------------------------

    def read_cstr(self, addr: int) -> bytes:
        if addr <= 0 or addr >= self.mem_size_now():
            raise E.WasmTrap(f"guest returned an address outside memory: {addr}")
        return _string_at(self.base + addr)

    def mem_size_now(self) -> int:
        self.mem_size = n = self.memory.data_len(self.store)
        return n

    def ensure(self, end: int) -> None:
        """Make linear memory at least `end` bytes long (within the memory cap)."""
        if end <= self.mem_size or end <= self.mem_size_now():
            return
        pages = (end - self.mem_size + PAGE - 1) // PAGE
        try:
            self.memory.grow(self.store, pages)
        except wasmtime.WasmtimeError:
            raise E.OutOfMemory(
                f"memory cap exceeded: need {end} bytes of linear memory, cap is {self.memory_limit} bytes"
            ) from None
        self.mem_size_now()

    def write(self, addr: int, data: bytes) -> None:
        _memmove(self.base + addr, data, len(data))

    # -- calls ------------------------------------------------------------------------------

    def call(self, name: str, *params: int) -> int:
        """Call an export. Leaves the epoch deadline alone: inside a host function the
        evaluation's deadline must keep running; at load time `setup` sets its own."""
        ex = self._exports.get(name)
        if ex is None:
            raise E.BundleLoadError(f"policy.wasm: missing export {name}")
        if ex.pack is not None:
            ex.pack.pack_into(self._argbuf, 0, *params)
        err = _call_unchecked(self._ctx, ex.ref, self._args_addr, 8, self._trap_ref)
        if err or self._trap:
            self._raise(err)
        return self._args[0].i32

    def _raise(self, err: Any) -> None:
        # Take ownership of the trap through a copy of the pointer and zero our out-slot in place:
        # an outer call (we may be inside a host function) still refers to that slot.
        trap = ctypes.cast(self._trap, ctypes.POINTER(B.wasm_trap_t)) if self._trap else None
        ctypes.memset(ctypes.addressof(self._trap), 0, ctypes.sizeof(ctypes.c_void_p))
        pending, self.pending = self.pending, None
        msg, code = _trap_message(trap, ctypes.cast(err, ctypes.POINTER(B.wasmtime_error_t)) if err else None)
        if isinstance(pending, (E.PolicyAbort, E.OutOfMemory)):
            # opa_abort leaves the module in a consistent state only by luck; never reuse it
            self.broken = str(pending)
            raise pending
        if pending is not None:
            self.broken = f"host function failed: {pending}"
            if isinstance(pending, (E.WasmError,)):
                raise pending
            if isinstance(pending, E.HaltError):
                raise E.BuiltinHalt(str(pending)) from None
            raise E.EvaluationError(f"host function failed: {type(pending).__name__}: {pending}") from pending
        self.broken = msg
        if code == wasmtime.TrapCode.INTERRUPT:
            raise E.DeadlineExceeded("evaluation deadline exceeded (interrupted)")
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            raise E.WasmTrap("policy trapped: stack overflow")
        if "out of memory" in msg.lower():
            raise E.OutOfMemory(f"policy ran out of memory: {msg}")
        raise E.WasmTrap(f"policy trapped: {msg}")

    # -- ABI-level operations ---------------------------------------------------------------

    def dump_json(self, value_addr: int) -> Any:
        s = self.call("opa_json_dump", value_addr)
        return _json_decode(self.read_cstr(s))

    def dump_value(self, value_addr: int) -> Any:
        s = self.call("opa_value_dump", value_addr)
        return decode_value(self.read_cstr(s))

    def _check(self, addr: int, n: int) -> None:
        end = addr + n
        if addr <= 0 or (end > self.mem_size and end > self.mem_size_now()):
            # a bad pointer must fail the evaluation, never read unmapped memory
            raise E.WasmTrap(f"guest value outside linear memory: {addr}+{n}")

    def read_value(self, addr: int) -> Any:
        """Decode an OPA value straight from linear memory (wasm32 layouts of wasm/src/value.h);
        no guest call. Falls back to `opa_value_dump` for a type it does not know."""
        self._check(addr, 16)
        view = self.view
        t = view[addr]
        if t == 4 or t == 8:  # string, interned string: {type, free, len@4, ptr@8}
            n, ptr = _unpack_u32x2(view, addr + 4)
            if n:
                self._check(ptr, n)
            return bytes(view[ptr : ptr + n]).decode("utf-8", "replace")
        if t == 3:  # number: {type, repr@1, union@8}
            if view[addr + 1] == 1:
                return _unpack_i64(view, addr + 8)[0]
            ptr, n = _unpack_u32x2(view, addr + 8)
            self._check(ptr, n)
            return _json_decode(bytes(view[ptr : ptr + n]))
        if t == 2 or t == 9:
            return view[addr + 1] != 0
        if t == 1:
            return None
        if t == 5:  # array: {type, elems@4, len@8, cap@12}; elem = {i, v}
            elems, n = _unpack_u32x2(view, addr + 4)
            if n:
                self._check(elems, 8 * n)
            return [self.read_value(_unpack_u32x2(view, elems + 8 * i)[1]) for i in range(n)]
        if t == 6 or t == 7:  # object / set: {type, buckets@4, n_buckets@8, len@12}
            buckets, nb = _unpack_u32x2(view, addr + 4)
            if nb:
                self._check(buckets, 4 * nb)
            items: list[Any] = []
            for b in range(nb):
                e = _unpack_u32x2(view, buckets + 4 * b)[0]
                while e:
                    self._check(e, 12)
                    if t == 6:  # {k, v, next}
                        k, v, e = _unpack_u32x3(view, e)
                        items.append((self.read_value(k), self.read_value(v)))
                    else:  # {v, next}
                        v, e = _unpack_u32x2(view, e)
                        items.append(self.read_value(v))
            if t == 7:
                return RegoSet(items)
            return {(tuple(k) if isinstance(k, list) else k): v for k, v in items}
        return self.dump_value(addr)

    def put_value(self, value: Any) -> int:
        if value is True or value is False:
            interned = self._bools[value]
            if interned:
                return interned
        raw = encode_value(value)
        n = len(raw)
        if n <= SCRATCH and self.scratch:
            # the parser copies what it keeps, so a fixed scratch buffer below the evaluation heap
            # saves the opa_malloc call
            addr = self.scratch
        else:
            addr = self.call("opa_malloc", n)
            self.ensure(addr + n)
        _memmove(self.base + addr, raw, n)
        v = self.call("opa_value_parse", addr, n)
        if v == 0:
            raise E.EvaluationError(f"opa_value_parse rejected a builtin result: {raw[:200]!r}")
        return v

    def setup(self, data_json: bytes | None) -> None:
        """Initialise the heap and load the base data document (once per instance)."""
        _set_epoch_deadline(self._ctx, deadline_ticks(LOAD_DEADLINE_S))
        self.call("opa_malloc", 0)
        self.scratch = self.call("opa_malloc", SCRATCH)
        self.ensure(self.scratch + SCRATCH)
        for b in (True, False):
            # the library's booleans are static (OPA_BOOLEAN_INTERNED in its data segment): a
            # builtin returning a boolean can hand back that address without a guest call
            addr = self.put_value(b)
            self._bools[b] = addr if self.view[addr] == 9 else 0
        if data_json:
            addr = self.call("opa_malloc", len(data_json))
            self.ensure(addr + len(data_json))
            self.write(addr, data_json)
            self.data_addr = self.call("opa_json_parse", addr, len(data_json))
            if self.data_addr == 0:
                raise E.BundleLoadError("data.json: the policy module could not parse it")
        if "opa_heap_blocks_stash" in self._exports:
            self.call("opa_heap_blocks_stash")
        self.eval_heap = self.call("opa_heap_ptr_get")

    def evaluate_raw(self, entrypoint_id: int, input_json: bytes | None, ticks: int) -> bytes:
        """`opa_eval` fast path: the result set in OPA's value format (`[{"result": ...}]` or `[]`).

        Value format (not JSON) so that sets stay distinguishable from arrays: they are then
        printed in Rego's canonical order, exactly as topdown prints them. For results without
        sets or non-string keys, value format and JSON are the same bytes."""
        if self.broken is not None:
            raise E.EvaluationError(f"instance is unusable: {self.broken}")
        heap = self.eval_heap
        if input_json is None:
            in_addr = in_len = 0
        else:
            in_len = len(input_json)
            in_addr = heap
            heap += in_len
            if heap > self.mem_size:
                self.ensure(heap)
            _memmove(self.base + in_addr, input_json, in_len)
        ex = self._eval
        ex.pack.pack_into(self._argbuf, 0, 0, entrypoint_id, self.data_addr, in_addr, in_len, heap, 1)
        _set_epoch_deadline(self._ctx, ticks)
        err = _call_unchecked(self._ctx, ex.ref, self._args_addr, 8, self._trap_ref)
        if err or self._trap:
            self._raise(err)
        res = _unpack_i32(self._argbuf)[0]
        if res <= 0:
            self.broken = "opa_eval returned no result"
            raise E.EvaluationError("opa_eval returned no result address")
        return _string_at(self.base + res)


def _names(module: wasmtime.Module) -> set[str]:
    return {e.name for e in module.exports}
