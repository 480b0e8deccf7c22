"""text/template's builtin functions (and, or, not, len, index, print, printf, println, eq, ne,
lt, le, gt, ge) over the values of `values`."""

from __future__ import annotations

from typing import Any

from bridge.opawasm.gocompat.errors import GoError, Unsupported
from bridge.opawasm.gocompat.fmt import sprintf
from bridge.opawasm.gocompat.texttemplate.values import JNum, gotype, kind, sprint, sprint1, truth


def _compare(op: str, a: Any, b: Any) -> bool:
    ka, kb = kind(a), kind(b)
    if ka != kb or ka == "other":
        if op in ("eq", "ne") and (a is None or b is None):
            raise GoError("template: error calling eq: invalid type for comparison")
        raise GoError("template: error calling " + op + ": incompatible types for comparison")
    if ka == "bool" and op not in ("eq", "ne"):
        raise GoError("template: error calling " + op + ": invalid type for comparison")
    a, b = (str(a), str(b)) if ka == "string" else (a, b)
    return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def call(name: str, args: list[Any]) -> Any:
    """Call the template function `name` (already checked to be one of FUNCS by the parser)."""
    if name == "and":
        for a in args:
            if not truth(a):
                return a
        return args[-1]
    if name == "or":
        for a in args:
            if truth(a):
                return a
        return args[-1]
    if name == "not":
        if len(args) != 1:
            raise GoError("template: wrong number of args for not")
        return not truth(args[0])
    if name == "len":
        if len(args) != 1 or not isinstance(args[0], (str, list, dict)):
            raise GoError(f"template: error calling len: len of type {gotype(args[0] if args else None)}")
        return len(args[0].encode() if isinstance(args[0], str) else args[0])
    if name == "index":
        return _index(args[0], args[1:])
    if name == "print":
        return sprint(args)
    if name == "println":
        return " ".join(sprint1(a) for a in args) + "\n"
    if name == "printf":
        if not args or not isinstance(args[0], str):
            raise GoError("template: printf needs a format string")
        return sprintf(args[0], [_fmt_arg(a) for a in args[1:]])
    if name in ("eq", "ne", "lt", "le", "gt", "ge"):
        if len(args) < 2:
            raise GoError(f"template: missing argument for {name}")
        if name == "eq":
            return any(_compare("eq", args[0], b) for b in args[1:])
        return _compare(name, args[0], args[1])
    raise Unsupported(f"function {name!r} is not supported by this host")


def _index(v: Any, keys: list[Any]) -> Any:
    for k in keys:
        if isinstance(v, dict):
            if not isinstance(k, str):
                raise GoError("template: error calling index: value has type int; should be string")
            v = v.get(k)
        elif isinstance(v, list):
            if not isinstance(k, int) or isinstance(k, bool):
                raise GoError("template: error calling index: cannot index slice/array with type " + gotype(k))
            if not 0 <= k < len(v):
                raise GoError(f"template: error calling index: index out of range: {k}")
            v = v[k]
        else:
            raise GoError(f"template: error calling index: can't index item of type {gotype(v)}")
    return v


def _fmt_arg(a: Any) -> Any:
    if isinstance(a, JNum):
        return _JNumArg(a)
    if isinstance(a, (list, dict)) or a is None:
        return sprint1(a)
    return a


class _JNumArg(str):
    """json.Number as a printf operand: prints its text for %v/%s, Go's bad-verb marker otherwise."""

    go_type = "json.Number"
