"""An instance's state after setup, taken once per revision and shared by every pooled instance.

Setting an instance up (the heap initialised, `data` parsed by `opa_json_parse`) leaves all of its
state in linear memory: OPA's heap pointer, free lists and the parsed data document live there,
and the module's only mutable global is the C stack pointer, which is back at its initial value
whenever an export returns. So the first instance of a revision is set up as before, its memory
is copied once into a sealed memfd (the *image*), and every further instance maps that image
privately (MAP_PRIVATE | MAP_FIXED) over its own linear memory: the parsed data is in memory once
per revision, each instance pays only for the pages it writes (its evaluation heap), and a new
instance costs an instantiation and one mmap instead of a JSON parse.

Why not wasmtime's own copy-on-write images (`memory_init_cow`) on a derived module whose data
segments are the snapshot (Wizer's way)? OPA modules import their memory and those images apply
only to defined ones, so it takes a binary rewrite (memory and globals sections, data segments)
and a second Cranelift compile per revision (per data change, which today reuses the compiled
module); the mapping here needs neither. What it relies on: the engine keeps linear memory
reserved in place (`memory_may_move=False`, static reservations) and only mprotects pages past
the current size when it grows, which wasmtime does for host-created memories with the on-demand
allocator, the one this engine uses. `restore` checks what it can (page alignment, the image's
seals and size, OPA's own heap pointer read back through the ABI) and fails loudly otherwise.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import sys
import threading
import weakref
from dataclasses import dataclass

from bridge.opawasm.capi import set_epoch_deadline
from bridge.opawasm.engine import deadline_ticks
from bridge.opawasm.errors import BundleLoadError, PoolClosed
from bridge.opawasm.runtime import SCRATCH, Instance

LOAD_DEADLINE_S = 30.0
_OPA_BOOLEAN = 9  # OPA_BOOLEAN's type tag: the library's interned booleans
# the image can neither change nor change size once taken: what every mapping of it relies on
_SEALS = sum(getattr(fcntl, f"F_SEAL_{s}", 0) for s in ("SEAL", "SHRINK", "GROW", "WRITE"))
_MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)  # Linux's value; Python's mmap module names it from 3.13


def setup(inst: Instance, data_json: bytes | None) -> None:
    """Initialise the heap and load the base data document: what every instance of a revision
    needs before its first evaluation (once per revision when an image shares it)."""
    set_epoch_deadline(inst._ctx, deadline_ticks(LOAD_DEADLINE_S))
    inst.call("opa_malloc", 0)
    inst.scratch = inst.call("opa_malloc", SCRATCH)
    inst.ensure(inst.scratch + SCRATCH)
    for b in (True, False):
        # the library's booleans are static (OPA_BOOLEAN_INTERNED in its data segment): a
        # builtin returning a boolean can hand back that address without a guest call
        addr = inst.put_value(b)
        inst.bools[b] = addr if inst.view[addr] == _OPA_BOOLEAN else 0
    if data_json:
        addr = inst.call("opa_malloc", len(data_json))
        inst.ensure(addr + len(data_json))
        inst.write(addr, data_json)
        inst.data_addr = inst.call("opa_json_parse", addr, len(data_json))
        if inst.data_addr == 0:
            raise BundleLoadError("data.json: the policy module could not parse it")
    if "opa_heap_blocks_stash" in inst._exports:
        inst.call("opa_heap_blocks_stash")
    inst.eval_heap = inst.call("opa_heap_ptr_get")


@dataclass(frozen=True, slots=True)
class _HostState:
    """What the host keeps beside linear memory about a set-up instance (addresses into it)."""

    scratch: int
    bools: tuple[int, int]
    data_addr: int
    eval_heap: int


class MemoryImage:
    """A set-up instance's linear memory in a sealed memfd, and the host's addresses into it."""

    def __init__(self, fd: int, size: int, state: _HostState) -> None:
        self.fd, self.size, self.state = fd, size, state
        # held while the fd is used: once closed, its number may name another file
        self.lock = threading.Lock()
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Release the memfd; instances that mapped it keep their mappings (and so the pages),
        which go with the last of them."""
        with self.lock:
            self._finalizer()


def supported(wasm: bytes) -> str | None:
    """Why instances of `wasm` cannot share a memory image here, or None when they can."""
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create") or not _SEALS:
        return "memory images need Linux memfd seals"
    if mmap.PAGESIZE > 65536 or 65536 % mmap.PAGESIZE:
        return f"host page size {mmap.PAGESIZE} does not divide the wasm page"
    try:
        mutable = mutable_globals(wasm)
    except (IndexError, ValueError) as exc:
        return f"cannot read the module's globals: {exc}"
    if mutable > 1:
        # more than the C stack pointer: state outside linear memory that an image would not carry
        return f"the module has {mutable} mutable globals (an image carries only the stack pointer's)"
    return None


def capture(inst: Instance) -> MemoryImage:
    """The image of a set-up instance (its whole linear memory), sealed, and read back once
    against the instance's memory: past this check the kernel's seals keep it as it was."""
    size = inst.mem_size_now()
    fd = os.memfd_create("groqpolicy-wasm-image", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = inst.view[:size]
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
        if os.fstat(fd).st_size != size or not _same_bytes(fd, inst.base, size):
            raise BundleLoadError("wasm memory image: read back differs from the instance's memory")
    except BaseException:
        os.close(fd)
        raise
    bools = (inst.bools[True], inst.bools[False])
    return MemoryImage(fd, size, _HostState(inst.scratch, bools, inst.data_addr, inst.eval_heap))


_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_memcmp = _libc.memcmp
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def _same_bytes(fd: int, addr: int, size: int) -> bool:
    """Whether the first `size` bytes of `fd` equal memory at `addr` (one memcmp, no copy)."""
    got = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if got in (None, ctypes.c_void_p(-1).value):
        raise BundleLoadError(f"wasm memory image: cannot map it: {os.strerror(ctypes.get_errno())}")
    try:
        return _memcmp(got, addr, size) == 0
    finally:
        _munmap(got, size)


def _map_over(image: MemoryImage, inst: Instance) -> None:
    try:
        seals = fcntl.fcntl(image.fd, fcntl.F_GET_SEALS)
        fd_size = os.fstat(image.fd).st_size
    except OSError as exc:
        raise BundleLoadError(f"wasm memory image: unusable: {exc}") from None
    if seals & _SEALS != _SEALS or fd_size != image.size or image.size % 65536:
        raise BundleLoadError(f"wasm memory image: corrupt (seals {seals:#x}, {fd_size} bytes, want {image.size})")
    flags = mmap.MAP_PRIVATE | _MAP_FIXED
    got = _mmap(inst.base, image.size, mmap.PROT_READ | mmap.PROT_WRITE, flags, image.fd, 0)
    if got != inst.base:
        err = ctypes.get_errno()
        inst.broken = "memory image not mapped"
        raise BundleLoadError(f"wasm memory image: mmap failed: {os.strerror(err)}")


def restore(image: MemoryImage, inst: Instance) -> None:
    """Map `image` privately over a fresh instance's linear memory and take over its host state;
    anything that does not add up fails the instance (BundleLoadError), it never evaluates; an
    image released with its revision raises PoolClosed."""
    if inst.base % mmap.PAGESIZE:
        raise BundleLoadError("wasm memory image: linear memory is not page-aligned")
    inst.ensure(image.size)
    if inst.mem_size_now() != image.size:
        raise BundleLoadError(f"wasm memory image: {image.size} bytes, fresh instance has {inst.mem_size}")
    with image.lock:
        if image.closed:
            # the revision's pool closed after this caller got past it: like any caller of a
            # closed pool it gets PoolClosed, on which WasmEvaluator retries on the new revision
            raise PoolClosed("instance pool is closed (its revision's memory image was released)")
        _map_over(image, inst)
    st = image.state
    inst.scratch, inst.data_addr, inst.eval_heap = st.scratch, st.data_addr, st.eval_heap
    inst.bools[True], inst.bools[False] = st.bools
    set_epoch_deadline(inst._ctx, deadline_ticks(LOAD_DEADLINE_S))
    heap = inst.call("opa_heap_ptr_get")
    if heap != st.eval_heap:
        inst.broken = "memory image does not match"
        raise BundleLoadError(f"wasm memory image: corrupt (heap pointer {heap}, image says {st.eval_heap})")


# -- the module's globals: only which of them are mutable -------------------------------------
# A wasm binary is a magic, a version and sections of (id, LEB128 size, body); the global section
# (id 6) lists (value type, mutability, constant init expression). Read by hand: it is these few
# lines, where a wasm parsing library would be a dependency for one field.

_GLOBAL_SECTION = 6
_CONST_OPERAND = {0x41: "s", 0x42: "s", 0x23: "u", 0xD2: "u", 0x43: 4, 0x44: 8, 0xD0: 1}
_CONST_ARITH = frozenset({0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E})  # extended-const add/sub/mul


def _leb(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _skip_const_expr(buf: bytes, i: int) -> int:
    while (op := buf[i]) != 0x0B:
        i += 1
        operand = _CONST_OPERAND.get(op)
        if isinstance(operand, int):
            i += operand
        elif operand is not None:
            i = _leb(buf, i)[1]
        elif op not in _CONST_ARITH:
            raise ValueError(f"unknown opcode {op:#x} in a global's initializer")
    return i + 1


def mutable_globals(wasm: bytes) -> int:
    """How many of the module's own globals are mutable."""
    if wasm[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    i = 8
    while i < len(wasm):
        section, size_at = wasm[i], i + 1
        size, body = _leb(wasm, size_at)
        if section == _GLOBAL_SECTION:
            count, j = _leb(wasm, body)
            mutable = 0
            for _ in range(count):
                if wasm[j] >= 0x80 or wasm[j + 1] > 1:  # a multi-byte (GC) type, or a bad flag
                    raise ValueError("unsupported global type")
                mutable += wasm[j + 1]
                j = _skip_const_expr(wasm, j + 2)
            return mutable
        i = body + size
    return 0
