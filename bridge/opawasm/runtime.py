"""One OPA-WASM policy instance on wasmtime: its store, linear memory, host imports and exports.

Calls go through the unchecked fast path of `capi`. Input goes into linear memory with one
`memmove`, the result comes out with one `string_at` (the guest NUL-terminates it) and one msgspec
decode. The host functions the guest imports (builtins, abort, println) and the way values cross
into and out of them live in `hostcall`.
"""

from __future__ import annotations

import ctypes
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec
import wasmtime

from bridge.opawasm import hostcall, hostfast
from bridge.opawasm.capi import (
    SLOTS,
    Export,
    TrapSlot,
    fuel_used,
    host_callback,
    host_func,
    new_slots,
    packer,
)
from bridge.opawasm.capi import call_unchecked as _call_unchecked
from bridge.opawasm.capi import set_epoch_deadline as _set_epoch_deadline
from bridge.opawasm.capi import set_fuel as _set_fuel
from bridge.opawasm.engine import engine, fuel_free_engine
from bridge.opawasm.errors import (
    BuiltinHalt,
    BundleLoadError,
    DeadlineExceeded,
    EvaluationError,
    HaltError,
    InlineBudgetExceeded,
    OutOfMemory,
    PolicyAbort,
    UnsupportedABIError,
    WasmError,
    WasmTrap,
)

if TYPE_CHECKING:  # for the annotation only: an instance holds the context, the builtins use it
    from bridge.opawasm.builtins.registry import EvalContext

PAGE = 65536
MIN_ABI_MINOR = 2
SCRATCH = 64 * 1024  # a fixed buffer for builtin results, below the evaluation heap (`memimage.setup`)
WASM32_MAX_MEMORY = 4 << 30
UNLIMITED_FUEL = 1 << 62  # an evaluation that is not inline: only its deadline and memory cap bound it

_unpack_i32 = struct.Struct("<i").unpack_from
_string_at = ctypes.string_at
_memmove = ctypes.memmove
_json_decode = msgspec.json.decode
_monotonic = time.monotonic

# the exports the evaluator calls, with their parameter counts (OPA's wasm ABI 1.2)
_EXPORTS = (
    ("opa_eval", 7), ("opa_malloc", 1), ("opa_heap_ptr_get", 0), ("opa_heap_ptr_set", 1),
    ("opa_json_parse", 2), ("opa_value_parse", 2), ("opa_value_dump", 1), ("opa_json_dump", 1),
    ("builtins", 0), ("entrypoints", 0), ("opa_heap_blocks_stash", 0),
)

Dispatch = Callable[["Instance", int, tuple[int, ...]], int]


class Instance:
    """One store + instance of a policy. Not thread-safe: the pool hands it to one caller at a time."""

    def __init__(
        self,
        module: wasmtime.Module,
        *,
        memory_limit: int,
        dispatch: Dispatch | None = None,
        on_print: Callable[[str], None] | None = None,
        fuel: bool = True,
        on: wasmtime.Engine | None = None,
    ) -> None:
        self.module = module
        self.fueled = fuel  # False: a store of the fuel-free engine, for a module compiled for it (lanes.py)
        self._engine = on  # the engine that compiled `module`, when given (a policy of `load_check()`)
        self.memory_limit = memory_limit = min(memory_limit, WASM32_MAX_MEMORY)
        self.broken: str | None = None
        self.pending: BaseException | None = None
        self.dispatch = dispatch
        self.on_print = on_print
        # the evaluation under way, for the builtins it calls (set by WasmPolicy per evaluation)
        self.ctx: EvalContext | None = None
        self.host: Any = None  # that evaluation's HostConfig when not its policy's (the fuel-free lane's)
        self.start_ns = 0
        self.deadline = 0.0
        self._closed = False
        self.store = store = self._new_store(memory_limit)
        self.fuel = UNLIMITED_FUEL  # what the evaluation under way started with
        self.runaway_fuel = 0  # instructions past which running out of memory counts as a runaway (0: never)
        self._args = new_slots()
        self._args_addr = ctypes.addressof(self._args)
        self._argbuf = memoryview(self._args).cast("B")
        self._trap = TrapSlot()
        self._trap_ptr, self._trap_ref = self._trap.ptr, self._trap.ref
        self.scratch = 0
        self.scratch_size = SCRATCH
        self.arena = 0  # where the next builtin result goes in the scratch buffer (hostcall.py)
        self.bools: dict[bool, int] = {True: 0, False: 0}
        self._callbacks: list[Any] = []  # the host functions' C callbacks: the store holds only their addresses
        imports, memory = self._link(module)
        try:
            self.instance = wasmtime.Instance(store, module, imports)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise BundleLoadError(f"policy.wasm: cannot instantiate: {exc}") from None
        exports = self.instance.exports(store)
        mem = memory if memory is not None else exports.get("memory")
        if not isinstance(mem, wasmtime.Memory):
            raise BundleLoadError("policy.wasm: no linear memory (neither imported nor exported)")
        self.memory = memory = mem
        self.base = ctypes.addressof(memory.data_ptr(store).contents)
        self.mem_size = memory.data_len(store)
        # A view over the whole memory cap: the engine reserves it up front and memory never moves
        # (memory_may_move=False), so addresses stay valid; reads are bounds-checked against mem_size.
        self.view = memoryview((ctypes.c_ubyte * max(memory_limit, self.mem_size)).from_address(self.base)).cast("B")
        self._exports = {
            name: Export(f, n) for name, n in _EXPORTS if isinstance(f := exports.get(name), wasmtime.Func)
        }
        self.abi = self._abi_version(exports)
        eval_export = self._require_eval()
        self._eval_ref, self._eval_pack = eval_export.ref, packer(7)
        self.data_addr = 0
        self.eval_heap = 0

    def _new_store(self, memory_limit: int) -> wasmtime.Store:
        store = wasmtime.Store(self._engine or (engine() if self.fueled else fuel_free_engine()))
        store.set_limits(memory_size=memory_limit)
        self._ctx_ptr = store._context()
        self._ctx = ctypes.cast(self._ctx_ptr, ctypes.c_void_p).value
        _set_epoch_deadline(self._ctx, 1 << 40)
        if self.fueled:  # on an engine without fuel, setting it fails (and allocates an error)
            _set_fuel(self._ctx, UNLIMITED_FUEL)
        return store

    def _link(self, module: wasmtime.Module) -> tuple[list[Any], wasmtime.Memory | None]:
        """The imports for `module` (all from "env"), and its linear memory when it imports one."""
        imports: list[Any] = []
        memory = None
        self.fast: hostfast.Env | None = None  # the native fast path's state, when it is linked in
        for imp in module.imports:
            name, ty = imp.name or "", imp.type
            if imp.module != "env":
                raise BundleLoadError(f"policy.wasm: unexpected import {imp.module}.{name}")
            callback = hostcall.callback(self, name)
            if name == "memory" and isinstance(ty, wasmtime.MemoryType):
                # the guest's own maximum, raised to the cap: the store's limit is what enforces it
                lim_max = max(ty.limits.min, self.memory_limit // PAGE)
                memory = wasmtime.Memory(self.store, wasmtime.MemoryType(wasmtime.Limits(ty.limits.min, lim_max)))
                imports.append(memory)
            elif callback is not None and isinstance(ty, wasmtime.FuncType):
                cb = host_callback(callback)
                self._callbacks.append(cb)
                if name == "opa_builtin3" and hostfast.available():  # glob.match in C where it can be
                    func, self.fast = hostfast.glob_import(self._ctx_ptr, ty, cb)
                    self._callbacks.append(self.fast)
                    imports.append(func)
                else:
                    imports.append(host_func(self._ctx_ptr, ty, cb))
            else:
                raise BundleLoadError(f"policy.wasm: unexpected import env.{name}")
        if self.fast is not None:
            if memory is None:  # a module that exports its memory instead: the Python path only
                self.fast = None
            else:
                hostfast.attach(self.fast, self._ctx, memory)
        return imports, memory

    def arm_fast_paths(self, glob_id: int) -> None:
        """Let the native fast path answer `glob.match` (builtin `glob_id`), once the library's
        interned booleans are known (after `memimage.setup` or `restore`)."""
        if self.fast is not None:
            hostfast.arm(self.fast, glob_id, self.bools[True], self.bools[False])

    def _abi_version(self, exports: Mapping[str, Any]) -> tuple[int, int]:
        def number(name: str) -> int:
            g = exports.get(name)
            return int(g.value(self.store)) if isinstance(g, wasmtime.Global) else 0

        return number("opa_wasm_abi_version"), number("opa_wasm_abi_minor_version")

    def _require_eval(self) -> Export:
        major, minor = self.abi
        ex = self._exports.get("opa_eval")
        if major != 1 or minor < MIN_ABI_MINOR or ex is None:
            raise UnsupportedABIError(
                f"policy.wasm: unsupported OPA wasm ABI {major}.{minor} (want 1.{MIN_ABI_MINOR} or later "
                f"with the opa_eval export); rebuild it with a current `opa build -t wasm`"
            )
        return ex

    def close(self) -> None:
        """Free the store now (not at the next GC cycle): used for discarded instances."""
        if self._closed:
            return
        self._closed = True
        self.broken = self.broken or "closed"
        # nothing may read the memory of a freed store: drop every way into it
        del self.view, self.memory, self.instance
        self._exports.clear()
        self.store.close()
        self._callbacks.clear()  # only after the store (which holds their function pointers) is gone
        self.dispatch = None

    def _out_of_memory(self, message: str) -> EvaluationError:
        """Deadline beats memory: a runaway fails as late, not as too big, whichever cap it hit first:
        when its time is up, or after more wasm instructions than its deadline stands for (counted,
        so the same answer for a policy and input under any load: `RUNAWAY_FUEL_PER_S`)."""
        used = fuel_used(self._ctx, self.fuel) if self.fueled else 0
        if (self.deadline and _monotonic() >= self.deadline) or 0 < self.runaway_fuel <= used:
            return DeadlineExceeded(f"evaluation deadline exceeded (and {message}, after {used:,} wasm instructions)")
        return OutOfMemory(message)

    # -- memory -----------------------------------------------------------------------------

    def read_cstr(self, addr: int) -> bytes:
        # memory only grows: below the size last read, the address is inside without asking wasmtime
        if addr <= 0 or (addr >= self.mem_size and addr >= self.mem_size_now()):
            raise WasmTrap(f"guest returned an address outside memory: {addr}")
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
            raise self._out_of_memory(
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
            raise BundleLoadError(f"policy.wasm: missing export {name}")
        if ex.pack is not None:
            ex.pack.pack_into(self._argbuf, 0, *params)
        err = _call_unchecked(self._ctx, ex.ref, self._args_addr, SLOTS, self._trap_ref)
        if err or self._trap_ptr:
            self._raise(err)
        return int(self._args[0].i32)

    def _raise(self, err: int | None) -> NoReturn:
        """Raise what made the last call fail, and mark the instance broken: after a trap, an
        abort or a failed host function its state is unknown, so it is never used again."""
        msg, code = self._trap.take(err)
        pending, self.pending = self.pending, None
        if isinstance(pending, OutOfMemory):
            pending = self._out_of_memory(str(pending))
        if isinstance(pending, (PolicyAbort, OutOfMemory, DeadlineExceeded, InlineBudgetExceeded)):
            # opa_abort leaves the module in a consistent state only by luck
            self.broken = str(pending)
            raise pending
        if pending is not None:
            self.broken = f"host function failed: {pending}"
            if isinstance(pending, WasmError):
                raise pending
            if isinstance(pending, HaltError):
                raise BuiltinHalt(str(pending)) from None
            raise EvaluationError(f"host function failed: {type(pending).__name__}: {pending}") from pending
        self.broken = msg
        if code == wasmtime.TrapCode.INTERRUPT:
            raise DeadlineExceeded("evaluation deadline exceeded (interrupted)")
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            raise InlineBudgetExceeded("evaluation needs more than the inline budget of wasm instructions")
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            raise WasmTrap("policy trapped: stack overflow")
        if "out of memory" in msg.lower():
            raise self._out_of_memory(f"policy ran out of memory: {msg}")
        raise WasmTrap(f"policy trapped: {msg}")

    # -- ABI-level operations ---------------------------------------------------------------

    def dump_json(self, value_addr: int) -> Any:
        s = self.call("opa_json_dump", value_addr)
        return _json_decode(self.read_cstr(s))

    def dump_value(self, value_addr: int) -> Any:
        return hostcall.dump_value(self, value_addr)

    def put_value(self, value: Any) -> int:
        return hostcall.put_value(self, value)

    def evaluate_raw(self, entrypoint_id: int, input_json: bytes | None, ticks: int, fuel: int = 0) -> bytes:
        """`opa_eval` fast path: the result set in OPA's value format (`[{"result": ...}]` or `[]`).

        Value format (not JSON) so that sets stay distinguishable from arrays: they are then
        printed in Rego's canonical order, exactly as topdown prints them. For results without
        sets or non-string keys, value format and JSON are the same bytes. `fuel`: at most this
        many wasm instructions (InlineBudgetExceeded beyond); 0 is unlimited."""
        if self.broken is not None:
            raise EvaluationError(f"instance is unusable: {self.broken}")
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
        self._eval_pack.pack_into(self._argbuf, 0, 0, entrypoint_id, self.data_addr, in_addr, in_len, heap, 1)
        _set_epoch_deadline(self._ctx, ticks)
        if self.fueled:
            self.fuel = fuel = fuel or UNLIMITED_FUEL
            _set_fuel(self._ctx, fuel)
        err = _call_unchecked(self._ctx, self._eval_ref, self._args_addr, SLOTS, self._trap_ref)
        if err or self._trap_ptr:
            self._raise(err)
        res = _unpack_i32(self._argbuf)[0]
        if res <= 0:
            self.broken = "opa_eval returned no result"
            raise EvaluationError("opa_eval returned no result address")
        return _string_at(self.base + res)

