"""Go's `fmt.Sprintf` for the argument types OPA's `sprintf` passes it (int64, big.Int, float64,
string; anything else arrives as its Rego text). Verbs and flags are Go's; a mismatch prints Go's
`%!verb(type=value)` marker, a missing operand `%!verb(MISSING)`, a surplus `%!(EXTRA ...)`."""

from __future__ import annotations

import math
import re
from typing import Any

from bridge.opawasm.gocompat.errors import TooLarge
from bridge.opawasm.gocompat.strconv import format_float_g, quote, quote_rune

_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])")


def sprintf(fmt: str, args: list[Any], limit: int | None = None) -> str:
    """fmt.Sprintf; with `limit`, an output that would pass it raises TooLarge before it is built
    (a width or precision is a number in the format: `%999999999d` asks for a gigabyte)."""
    out: list[str] = []
    i, argi, n = 0, 0, len(fmt)
    size = n  # the format's own text, at most; the widths and precisions come on top
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _VERB.match(fmt, j)
        if m is None:
            out.append("%!(NOVERB)")
            break
        i = m.end()
        flags, width, prec, verb = m.groups()
        if limit is not None and (width or prec):
            size += _requested(width, prec, args, argi)
            if size > limit:
                raise TooLarge(size)
        argi = _directive(out, flags, width, prec, verb, args, argi)
    if argi < len(args):
        extra = ", ".join(f"{_typename(a)}={_extra_val(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _requested(width: str | None, prec: str | None, args: list[Any], argi: int) -> int:
    """The widest a directive's width and precision can make its output (numbers or `*`)."""
    total = 0
    for spec in (width, prec):
        if spec == "*":
            v = args[argi] if argi < len(args) else 0
            total += abs(v) if isinstance(v, int) and not isinstance(v, bool) else 0
            argi += 1
        elif spec:
            total += int(spec)
    return total


def _directive(
    out: list[str], flags: str, width_s: str | None, prec_s: str | None, verb: str, args: list[Any], argi: int
) -> int:
    """Append one directive's text to `out`; return the index of the next unused operand."""
    if verb == "%":
        out.append("%")
        return argi
    width: int | None = None
    if width_s == "*":
        width = _int_operand(args, argi)
        argi += 1
        if width is None:
            out.append("%!(BADWIDTH)")
        elif width < 0:
            flags += "-"
            width = -width
    elif width_s:
        width = int(width_s)
    prec: int | None = None
    if prec_s == "*":
        prec = _int_operand(args, argi)
        argi += 1
        if prec is None:
            out.append("%!(BADPREC)")
        elif prec < 0:
            prec = None
    elif prec_s is not None:
        prec = int(prec_s) if prec_s else 0
    if argi >= len(args):
        out.append(f"%!{verb}(MISSING)")
        return argi
    a = args[argi]
    if verb == "T":
        out.append(_pad(_typename(a), width, flags))
    else:
        out.append(_format(a, verb, flags, width, prec))
    return argi + 1


def _int_operand(args: list[Any], i: int) -> int | None:
    """The operand a `*` width or precision takes, or None when it is missing or not an int."""
    if i < len(args) and isinstance(args[i], int) and not isinstance(args[i], bool):
        return args[i]
    return None


def _format(a: Any, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if isinstance(a, bool):
        a = "true" if a else "false"
    if isinstance(a, int):
        return _fmt_int(a, verb, flags, width, prec)
    if isinstance(a, float):
        return _fmt_float(a, verb, flags, width, prec)
    return _fmt_str(a, verb, flags, width, prec)


def _extra_val(a: Any) -> str:
    if isinstance(a, float):
        return format_float_g(a)
    return str(a)


def _typename(a: Any) -> str:
    if isinstance(a, bool):
        return "bool"
    if isinstance(a, int):
        return "int64" if -(2**63) <= a < 2**63 else "*big.Int"
    if isinstance(a, float):
        return "float64"
    return "string"


def _pad(s: str, width: int | None, flags: str, numeric: bool = False) -> str:
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    if "0" in flags and numeric:
        sign = s[0] if s[:1] in "+-" else ""
        body = s[len(sign):]
        return sign + "0" * (width - len(s)) + body
    return " " * (width - len(s)) + s


def _fmt_int(a: int, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if not -(2**63) <= a < 2**63:
        # a *big.Int formats itself: %s and %v print its decimal digits, an unknown verb says so
        if verb not in "bdosvxXO":
            return f"%!{verb}(big.Int={a})"
        verb = "d" if verb in "sv" else verb
    neg = a < 0
    n = -a if neg else a
    if verb in "dv":
        s = str(n)
    elif verb == "x":
        s = format(n, "x")
    elif verb == "X":
        s = format(n, "X")
    elif verb == "o":
        s = format(n, "o")
    elif verb == "O":
        s = "0o" + format(n, "o")
    elif verb == "b":
        s = format(n, "b")
    elif verb == "c":
        return _pad(chr(a) if 0 <= a <= 0x10FFFF else "\ufffd", width, flags)
    elif verb == "q":
        return _pad(quote_rune(chr(a) if 0 <= a <= 0x10FFFF else "\ufffd"), width, flags)
    elif verb == "U":
        s = f"U+{n:04X}"
    elif verb in "eEfFgG":
        return _fmt_float(float(a), verb, flags, width, prec)
    else:
        return f"%!{verb}({_typename(a)}={a})"
    if prec is not None and len(s) < prec:
        s = "0" * (prec - len(s)) + s
    if "#" in flags:
        if verb == "x":
            s = "0x" + s
        elif verb == "X":
            s = "0X" + s
        elif verb == "o" and not s.startswith("0"):
            s = "0" + s
    if neg:
        s = "-" + s
    elif "+" in flags:
        s = "+" + s
    elif " " in flags:
        s = " " + s
    return _pad(s, width, flags if prec is None else flags.replace("0", ""), numeric=True)


def _fmt_float(a: float, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if verb == "v" and prec is not None:
        s = format_float_g(a, prec or 1)
    elif verb == "v" or (verb in "gG" and prec is None):
        s = format_float_g(a, -1, verb == "G")
    elif verb in "fF":
        if math.isinf(a) or math.isnan(a):
            s = format_float_g(a)
        else:
            s = f"{a:.{6 if prec is None else prec}f}"
    elif verb in "eE":
        s = f"{a:.{6 if prec is None else prec}e}"  # at least two exponent digits, as in Go
        if verb == "E":
            s = s.upper()
    elif verb in "gG":
        s = format_float_g(a, prec or 1, verb == "G")
    else:
        return f"%!{verb}(float64={format_float_g(a)})"
    if "+" in flags and not s.startswith("-") and not s.startswith("+"):
        s = "+" + s
    elif " " in flags and not s.startswith("-"):
        s = " " + s
    return _pad(s, width, flags, numeric=True)


def _fmt_str(a: str, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if verb in "sv":
        s = a if prec is None else a[:prec]
    elif verb == "q":
        s = quote(a)
    elif verb == "x":
        s = a.encode("utf-8").hex()
    elif verb == "X":
        s = a.encode("utf-8").hex().upper()
    else:
        return f"%!{verb}({getattr(a, 'go_type', 'string')}={a})"
    return _pad(s, width, flags)
