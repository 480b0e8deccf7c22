"""OPA values read straight out of a policy's linear memory, without a guest call.

The layouts are those of OPA's wasm library (wasm/src/value.h) for wasm32: a value starts with
its type tag; strings, arrays, objects and sets point to further structs. Every pointer is
bounds-checked before it is followed, so a bad pointer fails the evaluation (WasmTrap) instead of
reading outside linear memory. A type the reader does not know goes through `opa_value_dump`.

This runs for every argument of every host call, so it is written for speed: one bounds check
per struct against the size known at the call (re-read from the store only when a check fails,
as the guest may have grown its memory), an array's or a bucket table's pointers unpacked in one
`struct` call, and the compiled policy's own string constants (interned strings in the module's
data segment, below the heap, which never change) decoded once per policy (`interned`).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from bridge.opawasm.errors import WasmTrap
from bridge.opawasm.hostcall import dump_value
from bridge.opawasm.runtime import Instance
from bridge.opawasm.values import RegoSet, decode_number, object_key

_unpack_u32x2 = struct.Struct("<II").unpack_from
_unpack_u32x3 = struct.Struct("<III").unpack_from
_unpack_i64 = struct.Struct("<q").unpack_from


@lru_cache(maxsize=256)
def _u32s(n: int) -> Any:
    return struct.Struct(f"<{n}I").unpack_from


def _check(inst: Instance, addr: int, n: int) -> None:
    end = addr + n
    if addr <= 0 or (end > inst.mem_size and end > inst.mem_size_now()):
        # a bad pointer must fail the evaluation, never read unmapped memory
        raise WasmTrap(f"guest value outside linear memory: {addr}+{n}")


def read_value(inst: Instance, addr: int, interned: dict[int, str] | None = None) -> Any:
    """The value at `addr` as a Python value (see `values`). `interned`: a cache of the policy's
    string constants by address, shared by the instances of one module (same data segment)."""
    if addr <= 0 or addr + 16 > inst.mem_size:
        _check(inst, addr, 16)
    view = inst.view
    t = view[addr]
    if t == 4 or t == 8:  # string, interned string: {type, free, len@4, ptr@8}
        if t == 8 and interned is not None and addr < inst.scratch:
            s = interned.get(addr)
            if s is None:
                s = interned[addr] = _string(inst, view, addr)
            return s
        return _string(inst, view, addr)
    if t == 3:  # number: {type, repr@1, union@8}
        if view[addr + 1] == 1:
            return _unpack_i64(view, addr + 8)[0]
        ptr, n = _unpack_u32x2(view, addr + 8)
        _check(inst, ptr, n)
        text = bytes(view[ptr : ptr + n])
        if n < 19 and text.isdigit():  # the common case (a JSON input's integers are kept as text)
            return int(text)
        return decode_number(text.decode("ascii", "replace"))
    if t == 2 or t == 9:
        return view[addr + 1] != 0
    if t == 1:
        return None
    if t == 5:  # array: {type, elems@4, len@8, cap@12}; elem = {i, v}
        elems, n = _unpack_u32x2(view, addr + 4)
        if not n:
            return []
        if elems <= 0 or elems + 8 * n > inst.mem_size:
            _check(inst, elems, 8 * n)
        out: list[Any] = []
        size = inst.mem_size
        for v in _u32s(2 * n)(view, elems)[1::2]:
            if 0 < v and v + 16 <= size and (view[v] == 4 or view[v] == 8):  # a string (or a constant one): inline
                ln, ptr = _unpack_u32x2(view, v + 4)
                if ln == 0 or (ptr > 0 and ptr + ln <= size):
                    out.append(str(view[ptr : ptr + ln], "utf-8", "replace"))
                    continue
            out.append(read_value(inst, v, interned))
        return out
    if t == 6 or t == 7:
        return _collection(inst, view, addr, t, interned)
    return dump_value(inst, addr)


def _string(inst: Instance, view: memoryview, addr: int) -> str:
    n, ptr = _unpack_u32x2(view, addr + 4)
    if n and (ptr <= 0 or ptr + n > inst.mem_size):
        _check(inst, ptr, n)
    return str(view[ptr : ptr + n], "utf-8", "replace")


def _collection(inst: Instance, view: memoryview, addr: int, t: int, interned: dict[int, str] | None) -> Any:
    """An object or a set: {type, buckets@4, n_buckets@8, len@12}; chained entries per bucket."""
    buckets, nb = _unpack_u32x2(view, addr + 4)
    if not nb:
        return RegoSet() if t == 7 else {}
    _check(inst, buckets, 4 * nb)
    obj: dict[Any, Any] = {}
    members: list[Any] = []
    for e in _u32s(nb)(view, buckets):
        while e:
            if e + 12 > inst.mem_size:
                _check(inst, e, 12)
            if t == 6:  # {k, v, next}
                k, v, e = _unpack_u32x3(view, e)
                key = read_value(inst, k, interned)
                obj[key if type(key) is str else object_key(key)] = read_value(inst, v, interned)
            else:  # {v, next}
                v, e = _unpack_u32x2(view, e)
                members.append(read_value(inst, v, interned))
    return RegoSet(members) if t == 7 else obj
