"""Go's `fmt.Sprintf` for the argument types OPA's `sprintf` produces (int, big int, float64, string).

topdown's sprintf converts each Rego argument before calling Go's fmt: integers (text without
`.eE`) to int64/big.Int, other numbers to float64, strings to Go strings, anything else to its
Rego text (`ast.Value.String()`). The verbs and flags below are Go's; mismatches print Go's
`%!verb(type=value)` markers.
"""

from __future__ import annotations

import math
import re
from typing import Any

from bridge.opawasm.values import RegoSet, rego_repr

_VERB = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?([a-zA-Z%])")


class GoFloat(float):
    pass


def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_float_g(f: float, prec: int = -1, upper: bool = False, exp_limit: int = 6) -> str:
    """Go's %v / %g for float64: shortest digits; exponent form when exp < -4 || exp >= exp_limit
    (strconv uses 6 for the shortest representation)."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if prec < 0:
        r = repr(f)
        mant, exp = _decompose(r)
        # %v uses shortest repr with %g's rule, but exponent threshold 21 (strconv 'g' with -1 precision)
        if exp < -4 or exp >= exp_limit:
            s = _exp_form(mant, exp)
        else:
            s = _plain(mant, exp)
        return s.upper() if upper else s
    s = f"{f:.{max(prec, 1) if prec else 1}g}"
    s = re.sub(r"e([+-])(\d)$", r"e\g<1>0\2", s)
    return s.upper() if upper else s


def _decompose(r: str) -> tuple[str, int]:
    """Digits (no dot, sign kept) and decimal exponent of the first digit."""
    neg = r.startswith("-")
    if neg:
        r = r[1:]
    if "e" in r or "E" in r:
        m, e = re.split("[eE]", r)
        exp = int(e)
    else:
        m, exp = r, 0
    if "." in m:
        ip, fp = m.split(".")
    else:
        ip, fp = m, ""
    digits = (ip + fp).lstrip("0")
    lead_zeros = len(ip + fp) - len((ip + fp).lstrip("0"))
    exp = exp + len(ip) - 1 - lead_zeros
    digits = digits.rstrip("0") or "0"
    return ("-" if neg else "") + digits, exp


def _exp_form(mant: str, exp: int) -> str:
    neg = mant.startswith("-")
    d = mant.lstrip("-")
    s = d[0] + ("." + d[1:] if len(d) > 1 else "")
    es = f"e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return ("-" if neg else "") + s + es


def _plain(mant: str, exp: int) -> str:
    neg = mant.startswith("-")
    d = mant.lstrip("-")
    if d == "0":
        return "-0" if neg else "0"
    if exp >= 0:
        if len(d) <= exp + 1:
            s = d + "0" * (exp + 1 - len(d))
        else:
            s = d[: exp + 1] + "." + d[exp + 1 :]
    else:
        s = "0." + "0" * (-exp - 1) + d
    return ("-" if neg else "") + s


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
        from bridge.opawasm.builtins.encoding import _go_rune

        return _pad(_go_rune(chr(a) if 0 <= a <= 0x10FFFF else "\ufffd"), width, flags)
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
        s = go_float_g(a, prec or 1)
    elif verb == "v" or (verb in "gG" and prec is None):
        s = go_float_g(a, -1, verb == "G")
    elif verb in "fF":
        if math.isinf(a) or math.isnan(a):
            s = go_float_g(a)
        else:
            s = f"{a:.{6 if prec is None else prec}f}"
    elif verb in "eE":
        s = f"{a:.{6 if prec is None else prec}e}"
        s = re.sub(r"e([+-])(\d)$", r"e\g<1>0\2", s)
        if verb == "E":
            s = s.upper()
    elif verb in "gG":
        s = go_float_g(a, prec or 1, verb == "G")
    elif verb in "dxXobcqsU":
        return f"%!{verb}(float64={go_float_g(a)})"
    else:
        return f"%!{verb}(float64={go_float_g(a)})"
    if "+" in flags and not s.startswith("-") and not s.startswith("+"):
        s = "+" + s
    elif " " in flags and not s.startswith("-"):
        s = " " + s
    return _pad(s, width, flags, numeric=True)


def _fmt_str(a: str, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    if verb in "sv":
        s = a if prec is None else a[:prec]
    elif verb == "q":
        s = _go_quote(a)
    elif verb == "x":
        s = a.encode("utf-8").hex()
    elif verb == "X":
        s = a.encode("utf-8").hex().upper()
    else:
        return f"%!{verb}({getattr(a, 'go_type', 'string')}={a})"
    return _pad(s, width, flags)


def go_sprintf(fmt: str, args: list[Any]) -> str:
    out: list[str] = []
    i = 0
    argi = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _VERB.match(fmt, j)
        if m is None:
            out.append("%!(NOVERB)")
            i = n
            break
        flags, width_s, prec_s, verb = m.groups()
        i = m.end()
        if verb == "%":
            out.append("%")
            continue
        width: int | None = None
        if width_s == "*":
            if argi < len(args) and isinstance(args[argi], int) and not isinstance(args[argi], bool):
                width = args[argi]
                if width < 0:
                    flags += "-"
                    width = -width
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        elif width_s:
            width = int(width_s)
        prec: int | None
        if prec_s is None:
            prec = None
        elif prec_s == "*":
            prec = None
            if argi < len(args) and isinstance(args[argi], int) and not isinstance(args[argi], bool):
                prec = args[argi] if args[argi] >= 0 else None
            else:
                out.append("%!(BADPREC)")
            argi += 1
        elif prec_s == "":
            prec = 0
        else:
            prec = int(prec_s)
        if verb == "T":
            if argi >= len(args):
                out.append("%!T(MISSING)")
                continue
            out.append(_pad(_typename(args[argi]), width, flags))
            argi += 1
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        a = args[argi]
        argi += 1
        if isinstance(a, bool):
            a = "true" if a else "false"
        if isinstance(a, int):
            out.append(_fmt_int(a, verb, flags, width, prec))
        elif isinstance(a, float):
            out.append(_fmt_float(a, verb, flags, width, prec))
        else:
            out.append(_fmt_str(a, verb, flags, width, prec))
    if argi < len(args):
        extra = ", ".join(f"{_typename(a)}={_extra_val(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _extra_val(a: Any) -> str:
    if isinstance(a, float):
        return go_float_g(a)
    return str(a)


def sprintf_args(values: list[Any]) -> list[Any]:
    """topdown's conversion of Rego operands to Go fmt arguments."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, bool) or v is None or isinstance(v, (list, dict, RegoSet, tuple)):
            out.append(rego_repr(v))
        elif isinstance(v, int):
            out.append(v)
        elif isinstance(v, float):
            out.append(v)
        elif isinstance(v, str):
            out.append(v)
        else:
            out.append(rego_repr(v))
    return out
