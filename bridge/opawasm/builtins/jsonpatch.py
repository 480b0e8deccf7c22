"""json.patch (topdown json.go's applyPatches over OPA's internal/edittree), on plain values.

A path is a JSON pointer (leading slashes trimmed, `~1` and `~0` unescaped) or an array of
segments of any type. A segment selects an object's key or a set's member by Rego equality (the
string "1" is not the number 1), or an array index (a number, or a string without leading zeros;
"-" is the end). Adding to a set needs a key equal to the value. `replace` is remove then add,
so replacing what is absent fails; every failure is a builtin error (the call is undefined).
"""

from __future__ import annotations

from typing import Any

from bridge.opawasm.builtins.operands import type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import RegoSet, canonical_key, rego_repr


def _path(p: Any) -> list[Any]:
    if isinstance(p, str):
        if p == "":
            return []
        return [part.replace("~1", "/").replace("~0", "~") for part in p.lstrip("/").split("/")]
    if isinstance(p, (list, tuple)):
        return list(p)
    raise BuiltinError(
        f"operand 2 must be one of {{set, array}} containing string paths or array of path segments but got {type_name(p)}"
    )


def _index(length: int, key: Any) -> int:
    """edittree's toIndex."""
    if isinstance(key, bool) or not isinstance(key, (int, float, str)):
        raise BuiltinError("invalid type for indexing")
    if isinstance(key, str):
        if key == "-":
            return length
        try:
            i = int(key, 10)
        except ValueError:
            raise BuiltinError("invalid string for indexing") from None
        if key != "0" and key.startswith("0"):
            raise BuiltinError("leading zeros are not allowed in JSON paths")
        return i
    if isinstance(key, float) and not key.is_integer():
        raise BuiltinError("invalid number type for indexing")
    return int(key)


def _member(s: RegoSet, key: Any) -> Any:
    want = canonical_key(key)
    for m in s.items:
        if canonical_key(m) == want:
            return m
    raise BuiltinError(f"path {rego_repr(key)} does not exist in set term {rego_repr(s)}")


def _child(doc: Any, key: Any) -> Any:
    if isinstance(doc, dict):
        k = _key(doc, key)
        if k is _ABSENT:
            raise BuiltinError(f"path {rego_repr(key)} does not exist in object term {rego_repr(doc)}")
        return doc[k]
    if isinstance(doc, RegoSet):
        return _member(doc, key)
    if isinstance(doc, list):
        i = _index(len(doc), key)
        if not 0 <= i < len(doc):
            raise BuiltinError(f"path {i} does not exist in array term {rego_repr(doc)}")
        return doc[i]
    raise BuiltinError(f"expected composite type for path {rego_repr(key)}, found value: {rego_repr(doc)}")


_ABSENT = object()


def _key(obj: dict[Any, Any], key: Any) -> Any:
    """The key of `obj` equal to `key` as a Rego value (1 and 1.0 are one key), or _ABSENT."""
    if isinstance(key, str):
        return key if key in obj else _ABSENT
    want = canonical_key(key)
    return next((k for k in obj if canonical_key(k) == want), _ABSENT)


def _without(obj: dict[Any, Any], k: Any) -> dict[Any, Any]:
    if k is _ABSENT:
        return obj
    if isinstance(k, str):
        return {x: v for x, v in obj.items() if not (isinstance(x, str) and x == k)}
    return {x: v for x, v in obj.items() if x is not k}  # k is one of obj's own keys


def _get(doc: Any, path: list[Any]) -> Any:
    for key in path:
        doc = _child(doc, key)
    return doc


def _with_child(doc: Any, key: Any, child: Any) -> Any:
    """`doc` with the child at `key` (which exists) replaced: a copy, never the original."""
    if isinstance(doc, dict):
        return {**doc, _key(doc, key): child}
    if isinstance(doc, RegoSet):
        old = canonical_key(_member(doc, key))
        return RegoSet([child if canonical_key(m) == old else m for m in doc.items])
    i = _index(len(doc), key)
    return [*doc[:i], child, *doc[i + 1 :]]


def _insert(doc: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    key = path[0]
    if len(path) > 1:
        return _with_child(doc, key, _insert(_child(doc, key), path[1:], value))
    if isinstance(doc, dict):
        return {**_without(doc, _key(doc, key)), key: value}
    if isinstance(doc, RegoSet):
        if canonical_key(key) != canonical_key(value):
            raise BuiltinError(f"set key {rego_repr(key)} does not equal value to be inserted {rego_repr(value)}")
        return RegoSet([*doc.items, value])
    if isinstance(doc, list):
        i = _index(len(doc), key)
        if not 0 <= i <= len(doc):
            raise BuiltinError("index for array insertion out of bounds")
        return [*doc[:i], value, *doc[i:]]
    raise BuiltinError(f"expected composite type, found value: {rego_repr(doc)}")


def _delete(doc: Any, path: list[Any]) -> Any:
    if not path:
        raise BuiltinError("deleted node encountered during delete operation")
    key = path[0]
    if len(path) > 1:
        return _with_child(doc, key, _delete(_child(doc, key), path[1:]))
    if isinstance(doc, dict):
        k = _key(doc, key)
        if k is _ABSENT:
            raise BuiltinError(f"cannot delete child key {rego_repr(key)} that does not exist")
        return _without(doc, k)
    if isinstance(doc, RegoSet):
        gone = canonical_key(_member(doc, key))
        return RegoSet([m for m in doc.items if canonical_key(m) != gone])
    if isinstance(doc, list):
        i = _index(len(doc), key)
        if not 0 <= i < len(doc):
            raise BuiltinError("index for array delete out of bounds")
        return [*doc[:i], *doc[i + 1 :]]
    raise BuiltinError(f"expected composite type, found value: {rego_repr(doc)}")


def _required(op: dict[str, Any], name: str) -> Any:
    if name not in op:
        raise BuiltinError(f"missing required attribute '{name}'")
    return op[name]


def _apply(doc: Any, op: dict[str, Any]) -> Any:
    _required(op, "path")
    kind = _required(op, "op")
    if not isinstance(kind, str):
        raise BuiltinError(f"attribute 'op' must be a string but found: {type_name(kind)}")
    path = _path(op["path"])
    if kind == "add":
        return _insert(doc, path, _required(op, "value"))
    if kind == "remove":
        return _delete(doc, path)
    if kind == "replace":
        doc = _delete(doc, path) if path else doc  # the root is replaced, whatever it holds
        return _insert(doc, path, _required(op, "value"))
    if kind in ("move", "copy"):
        source = _path(_required(op, "from"))
        chunk = _get(doc, source)
        if kind == "move":
            doc = _delete(doc, source)
        return _insert(doc, path, chunk)
    if kind == "test":
        chunk = _get(doc, path)
        value = _required(op, "value")
        if canonical_key(chunk) != canonical_key(value):
            raise BuiltinError(
                f"value from EditTree != patch value.\n\nExpected: {rego_repr(value)}\n\nFound: {rego_repr(chunk)}"
            )
        return doc
    raise BuiltinError(f"unrecognized op: '{kind}'")


@builtin("json.patch")
def json_patch(ctx: EvalContext, doc: Any, patches: Any) -> Any:
    if not isinstance(patches, (list, tuple)):
        raise BuiltinError(f"operand 2 must be array but got {type_name(patches)}")
    for op in patches:
        if not isinstance(op, dict):
            raise BuiltinError("must be an array of JSON-Patch objects, but at least one element is not an object")
        doc = _apply(doc, op)
    return doc
