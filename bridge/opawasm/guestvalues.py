"""OPA values read straight out of a policy's linear memory, without a guest call.

The layouts are those of OPA's wasm library (wasm/src/value.h) for wasm32: a value starts with
its type tag; strings, arrays, objects and sets point to further structs. Every pointer is
bounds-checked before it is followed, so a bad pointer fails the evaluation (WasmTrap) instead of
reading outside linear memory. A type the reader does not know goes through `opa_value_dump`.
"""

from __future__ import annotations

import struct
from typing import Any

from bridge.opawasm.errors import WasmTrap
from bridge.opawasm.runtime import Instance
from bridge.opawasm.values import RegoSet, decode_number, object_key

_unpack_u32x2 = struct.Struct("<II").unpack_from
_unpack_u32x3 = struct.Struct("<III").unpack_from
_unpack_i64 = struct.Struct("<q").unpack_from


def _check(inst: Instance, addr: int, n: int) -> None:
    end = addr + n
    if addr <= 0 or (end > inst.mem_size and end > inst.mem_size_now()):
        # a bad pointer must fail the evaluation, never read unmapped memory
        raise WasmTrap(f"guest value outside linear memory: {addr}+{n}")


def read_value(inst: Instance, addr: int) -> Any:
    """The value at `addr` as a Python value (see `values`)."""
    _check(inst, addr, 16)
    view = inst.view
    t = view[addr]
    if t == 4 or t == 8:  # string, interned string: {type, free, len@4, ptr@8}
        n, ptr = _unpack_u32x2(view, addr + 4)
        if n:
            _check(inst, ptr, n)
        return bytes(view[ptr : ptr + n]).decode("utf-8", "replace")
    if t == 3:  # number: {type, repr@1, union@8}
        if view[addr + 1] == 1:
            return _unpack_i64(view, addr + 8)[0]
        ptr, n = _unpack_u32x2(view, addr + 8)
        _check(inst, ptr, n)
        return decode_number(bytes(view[ptr : ptr + n]).decode("ascii", "replace"))
    if t == 2 or t == 9:
        return view[addr + 1] != 0
    if t == 1:
        return None
    if t == 5:  # array: {type, elems@4, len@8, cap@12}; elem = {i, v}
        elems, n = _unpack_u32x2(view, addr + 4)
        if n:
            _check(inst, elems, 8 * n)
        return [read_value(inst, _unpack_u32x2(view, elems + 8 * i)[1]) for i in range(n)]
    if t == 6 or t == 7:  # object / set: {type, buckets@4, n_buckets@8, len@12}
        buckets, nb = _unpack_u32x2(view, addr + 4)
        if nb:
            _check(inst, buckets, 4 * nb)
        items: list[Any] = []
        for b in range(nb):
            e = _unpack_u32x2(view, buckets + 4 * b)[0]
            while e:
                _check(inst, e, 12)
                if t == 6:  # {k, v, next}
                    k, v, e = _unpack_u32x3(view, e)
                    items.append((read_value(inst, k), read_value(inst, v)))
                else:  # {v, next}
                    v, e = _unpack_u32x2(view, e)
                    items.append(read_value(inst, v))
        if t == 7:
            return RegoSet(items)
        return {(k if isinstance(k, str) else object_key(k)): v for k, v in items}
    return inst.dump_value(addr)
