"""Go's strconv as Rego values print: `Quote`, a rune's `%q`, and `FormatFloat(f, 'g', prec, 64)`."""

from __future__ import annotations

import math
import re

_SHORT_ESCAPES = {
    '"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r",
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v",
}  # fmt: skip


def quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote: a double-quoted Go string literal; printable non-ASCII stays as it is, unless
    `ascii_only` (strconv.QuoteToASCII, fmt's `%+q`)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        esc = _SHORT_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o > 0x7F and (ascii_only or not ch.isprintable()):
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def quote_rune(ch: str, ascii_only: bool = False) -> str:
    """strconv.QuoteRune (a rune as fmt's `%q` prints it): single-quoted, escaped as `quote` escapes;
    `ascii_only` as strconv.QuoteRuneToASCII (`%+q`)."""
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + quote(ch, ascii_only)[1:-1] + "'"


def can_backquote(s: str) -> bool:
    """strconv.CanBackquote: whether `s` can be a raw string literal (fmt's `%#q`)."""
    for ch in s:
        if ch in "`\x7f\ufeff" or (ch < " " and ch != "\t"):
            return False
    return True


def format_float_g(f: float, prec: int = -1, upper: bool = False, exp_limit: int = 6) -> str:
    """Go's %v / %g for a float64. With `prec < 0`: the shortest digits that round-trip, in
    exponent form when the exponent is < -4 or >= exp_limit (6 for fmt's %v and %g; a Rego number's
    text uses 21, the threshold of Go's encoding/json)."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if prec < 0:
        mant, exp = _decompose(repr(f))
        s = _exp_form(mant, exp) if exp < -4 or exp >= exp_limit else _plain(mant, exp)
        return s.upper() if upper else s
    # Python's exponent has at least two digits, as Go's does (`1e+06`)
    s = f"{f:.{max(prec, 1) if prec else 1}g}"
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
    ip, _, fp = m.partition(".")
    digits = (ip + fp).lstrip("0")
    lead_zeros = len(ip + fp) - len(digits)
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
