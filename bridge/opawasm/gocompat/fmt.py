"""Go's `fmt.Sprintf` for the operand types OPA's `sprintf` passes it (int64, *big.Int, float64,
string; anything else arrives as its Rego text) and text/template's `printf` (bool too).

The format is parsed once (print.go's `doPrintf`, everything in it that does not depend on the
operands) into a program kept in a bounded LRU: a policy formats its messages with a handful of
constant formats, so each call only formats. A program whose directives are all plain `%s`, `%v`
and `%d` also carries the equivalent Python %-template, used when every operand's type prints the
same under both (strings under `%s`/`%v`, integers under `%d`/`%v`): one C call for the commonest
messages. Everything else runs the port (`fmtverbs`): flags, widths, precisions, `*`, argument
indexes `%[n]`, and Go's markers `%!verb(type=value)`, `%!verb(MISSING)`, `%!verb(BADINDEX)`,
`%!(BADWIDTH)`, `%!(BADPREC)`, `%!(NOVERB)`, `%!(EXTRA ...)`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from bridge.opawasm.gocompat.errors import TooLarge
from bridge.opawasm.gocompat.fmtverbs import Directive, typename

# Formats longer than this are parsed on every call instead of kept: the cache's memory stays
# bounded whatever formats the input supplies.
_CACHED_FORMAT_CHARS = 4096
_TOO_LARGE = 1_000_000  # print.go's tooLarge: a width, precision or index past it is refused
_BAD = -1  # an argument index that did not parse

# Steps between the flags and the verb, in the order doPrintf takes them.
_INDEX, _WIDTH_STAR, _WIDTH, _PREC_STAR, _PREC, _BAD_ARGNUM = range(6)

_FAST_TYPES = {"s": (str,), "v": (str, int), "d": (int,)}
_PY_VERB = {"s": "s", "v": "s", "d": "d"}
_MAX_SIGNATURES = 64  # operand-type combinations kept per program for the %-template


class _Verb:
    """One directive: flags, the steps that set width/precision/operand, and the verb (None: NOVERB)."""

    __slots__ = ("flags", "steps", "verb")

    def __init__(self, flags: str, steps: tuple[tuple[int, int], ...], verb: str | None) -> None:
        self.flags, self.steps, self.verb = flags, steps, verb


class _Program:
    __slots__ = ("items", "reordered", "signatures", "template")

    def __init__(self, items: list[str | _Verb], reordered: bool) -> None:
        self.items, self.reordered = items, reordered
        self.template: str | None = None
        # the operand types (a tuple of `type(a)`) the template prints exactly as Go would
        self.signatures: frozenset[tuple[type, ...]] = frozenset()
        verbs = [it for it in items if isinstance(it, _Verb)]
        if all(not v.flags and not v.steps and v.verb in _FAST_TYPES for v in verbs):
            choices = [_FAST_TYPES[v.verb] for v in verbs if v.verb]
            if math.prod(map(len, choices)) <= _MAX_SIGNATURES:
                self.signatures = frozenset(itertools.product(*choices))
                self.template = "".join(it.replace("%", "%%") if isinstance(it, str) else "%" + _PY_VERB[str(it.verb)]
                                        for it in items)


def sprintf(fmt: str, args: Sequence[Any], limit: int | None = None) -> str:
    """fmt.Sprintf; with `limit`, an output that would pass it raises TooLarge before it is built
    (a width or precision is a number in the format: `%9999999d` asks for ten megabytes)."""
    prog = _program(fmt)
    if prog.template is not None and tuple(map(type, args)) in prog.signatures:
        return prog.template % tuple(args)
    return _run(prog, args, len(fmt), limit)


def sprintf_plain(fmt: str, args: Sequence[Any]) -> str | None:
    """`sprintf` where every operand is a plain str or int and the format's directives are plain
    `%s`/`%v`/`%d`, else None: the common case, without converting the operands first."""
    prog = _program(fmt)
    if prog.template is not None and tuple(map(type, args)) in prog.signatures:
        return prog.template % tuple(args)
    return None


def _program(fmt: str) -> _Program:
    return _cached(fmt) if len(fmt) <= _CACHED_FORMAT_CHARS else _compile(fmt)


def _run(prog: _Program, args: Sequence[Any], size: int, limit: int | None) -> str:
    out: list[str] = []
    n, argi = len(args), 0
    for it in prog.items:
        if isinstance(it, str):
            out.append(it)
            continue
        d, good = Directive(it.flags), True
        for step, value in it.steps:
            if step == _INDEX:
                if 0 <= value < n:
                    argi = value
                else:
                    good = False
            elif step == _WIDTH_STAR:
                d.wid, d.wid_present, argi = _int_arg(args, argi)
                if not d.wid_present:
                    out.append("%!(BADWIDTH)")
                if d.wid < 0:
                    d.wid, d.minus, d.zero = -d.wid, True, False
            elif step == _WIDTH:
                d.wid, d.wid_present = value, True
            elif step == _PREC_STAR:
                d.prec, d.prec_present, argi = _int_arg(args, argi)
                if d.prec < 0:
                    d.prec, d.prec_present = 0, False
                if not d.prec_present:
                    out.append("%!(BADPREC)")
            elif step == _PREC:
                d.prec, d.prec_present = value, True
            else:
                good = False
        verb = it.verb
        if verb is None:
            out.append("%!(NOVERB)")
            break
        if limit is not None and (d.wid_present or d.prec_present):
            size += d.wid + d.prec
            if size > limit:
                raise TooLarge(size)
        if verb == "%":
            out.append("%")
        elif not good:
            out.append(f"%!{verb}(BADINDEX)")
        elif argi >= n:
            out.append(f"%!{verb}(MISSING)")
        else:
            if verb in "vw":  # %#v and %+v are their own formats, not flags
                d.sharp_v, d.sharp, d.plus_v, d.plus = d.sharp, False, d.plus, False
            out.append(d.arg(args[argi], verb))
            argi += 1
    if not prog.reordered and argi < n:
        out.append("%!(EXTRA " + ", ".join(f"{typename(a)}={Directive().arg(a, 'v')}" for a in args[argi:]) + ")")
    return "".join(out)


def _int_arg(args: Sequence[Any], i: int) -> tuple[int, bool, int]:
    """print.go's intFromArg: the operand a `*` takes (only an int64 will do), and the next index."""
    if i >= len(args):
        return 0, False, i
    a = args[i]
    if isinstance(a, int) and not isinstance(a, bool) and -_TOO_LARGE <= a <= _TOO_LARGE:
        return a, True, i + 1
    return 0, False, i + 1


@lru_cache(maxsize=512)
def _cached(fmt: str) -> _Program:
    return _compile(fmt)


def _compile(fmt: str) -> _Program:
    """doPrintf's walk over the format, minus the operands: literal text and directives."""
    items: list[str | _Verb] = []
    reordered = False
    end, i = len(fmt), 0
    while i < end:
        j = fmt.find("%", i)
        if j < 0:
            items.append(fmt[i:])
            break
        if j > i:
            items.append(fmt[i:j])
        i = j + 1
        k = i
        while k < end and fmt[k] in "#0+- ":
            k += 1
        flags, i = fmt[i:k], k
        steps: list[tuple[int, int]] = []
        i, after_index, seen = _arg_number(fmt, i, steps)
        reordered |= seen
        if i < end and fmt[i] == "*":
            i += 1
            steps.append((_WIDTH_STAR, 0))
            after_index = False
        else:
            wid, present, i = _parse_num(fmt, i, end)
            if present:
                steps.append((_WIDTH, wid))
                if after_index:  # "%[3]2d"
                    steps.append((_BAD_ARGNUM, 0))
        if i + 1 < end and fmt[i] == ".":
            i += 1
            if after_index:  # "%[3].2d"
                steps.append((_BAD_ARGNUM, 0))
            i, after_index, seen = _arg_number(fmt, i, steps)
            reordered |= seen
            if i < end and fmt[i] == "*":
                i += 1
                steps.append((_PREC_STAR, 0))
                after_index = False
            else:
                prec, _, i = _parse_num(fmt, i, end)
                steps.append((_PREC, prec))  # "%.d": a missing precision is 0
        if not after_index:
            i, after_index, seen = _arg_number(fmt, i, steps)
            reordered |= seen
        if i >= end:
            items.append(_Verb(flags, tuple(steps), None))
            break
        items.append(_Verb(flags, tuple(steps), fmt[i]))
        i += 1
    return _Program(items, reordered)


def _parse_num(s: str, start: int, end: int) -> tuple[int, bool, int]:
    """print.go's parsenum: a decimal number at `start`; one that grows past 1e6 ends the format."""
    num, i = 0, start
    while i < end and "0" <= s[i] <= "9":
        if num > _TOO_LARGE:
            return 0, False, end
        num = num * 10 + ord(s[i]) - 48
        i += 1
    return num, i > start, i


def _arg_number(fmt: str, i: int, steps: list[tuple[int, int]]) -> tuple[int, bool, bool]:
    """print.go's argNumber: an explicit `[n]` at `i` becomes an index step. Returns the new
    position, whether an index parsed (Go's afterIndex) and whether there was a `[` at all."""
    if i >= len(fmt) or fmt[i] != "[":
        return i, False, False
    close = fmt.find("]", i + 1)
    if len(fmt) - i < 3 or close < 0:  # parseArgNumber: no closing bracket
        steps.append((_INDEX, _BAD))
        return i + 1, False, True
    num, ok, stop = _parse_num(fmt, i + 1, close)
    if not ok or stop != close:
        steps.append((_INDEX, _BAD))
        return close + 1, False, True
    steps.append((_INDEX, num - 1))  # one-based in the format
    return close + 1, True, True
