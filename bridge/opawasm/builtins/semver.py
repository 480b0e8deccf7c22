"""semver.* builtins (topdown semver.go over internal/semver: SemVer 2.0.0, no leading "v")."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError

_Ordered = TypeVar("_Ordered", int, str)
_RX = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def parse(s: str) -> tuple[int, int, int, list[str]] | None:
    if s.startswith("v"):
        s = s[1:]  # internal/semver trims one leading "v"
    m = _RX.match(s)
    if not m:
        return None
    pre = m.group(4).split(".") if m.group(4) else []
    for p in pre:
        if p.isdigit() and len(p) > 1 and p[0] == "0":
            return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre


def _cmp(a: _Ordered, b: _Ordered) -> int:
    return (a > b) - (a < b)


def compare(a: tuple, b: tuple) -> int:
    for x, y in zip(a[:3], b[:3], strict=True):
        if x != y:
            return _cmp(x, y)
    pa, pb = a[3], b[3]
    if not pa and not pb:
        return 0
    if not pa:
        return 1
    if not pb:
        return -1
    for x, y in zip(pa, pb, strict=False):
        if x == y:
            continue
        xd, yd = x.isdigit(), y.isdigit()
        if xd and yd:
            return _cmp(int(x), int(y))
        if xd:
            return -1
        if yd:
            return 1
        return _cmp(x, y)
    return _cmp(len(pa), len(pb))


@builtin("semver.is_valid")
def is_valid(ctx: EvalContext, v: Any) -> bool:
    return isinstance(v, str) and parse(v) is not None


@builtin("semver.compare")
def semver_compare(ctx: EvalContext, a: Any, b: Any) -> int:
    a, b = need_str(a, 1), need_str(b, 2)
    pa, pb = parse(a), parse(b)
    if pa is None:
        raise BuiltinError(f'operand 1: string "{a}" is not a valid SemVer')
    if pb is None:
        raise BuiltinError(f'operand 2: string "{b}" is not a valid SemVer')
    return compare(pa, pb)
