"""One directive of Go's `fmt.Sprintf` applied to one operand: the flags, width and precision of a
`%` directive (Go's `fmt` struct, format.go) and the verbs each operand type knows (print.go's
`printArg`, `fmtInteger`, `fmtFloat`, `fmtString`, `badVerb`, and math/big's `Int.Format`).

Operands are those OPA's `sprintf` passes: int64 and *big.Int (a Python int, by its range),
float64, string, and bool (text/template's `printf`). `gocompat.fmt` parses the format and walks
it; this module formats. Widths count runes, as Go's do; a Python `str` is runes already.
"""

from __future__ import annotations

import math
from typing import Any

from bridge.opawasm.gocompat.strconv import _decompose, _plain, can_backquote, format_float_g, quote, quote_rune

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UINT64 = 2**64 - 1
_MAX_RUNE = 0x10FFFF


def typename(a: Any) -> str:
    """reflect.TypeOf(operand).String(): what `%T` and the `%!verb(type=value)` markers print."""
    if isinstance(a, bool):
        return "bool"
    if isinstance(a, int):
        return "int64" if INT64_MIN <= a <= INT64_MAX else "*big.Int"
    if isinstance(a, float):
        return "float64"
    return getattr(a, "go_type", "string")


_FLAG_NAMES = {"-": "minus", "+": "plus", "#": "sharp", " ": "space", "0": "zero"}


class Directive:
    """The state of one directive (Go's fmtFlags, width and precision); `arg` formats an operand.
    Unset fields read the class defaults, so a directive without flags costs one empty object."""

    minus = plus = sharp = space = zero = plus_v = sharp_v = False
    wid_present = prec_present = False
    wid = prec = 0

    def __init__(self, flags: str = "") -> None:
        for f in flags:
            setattr(self, _FLAG_NAMES[f], True)

    # -- padding (format.go: writePadding, pad, padString) ------------------------------------------

    def padding(self, n: int, zero: bool) -> str:
        if n <= 0:
            return ""
        return ("0" if zero and not self.minus else " ") * n

    def pad(self, s: str, zero: bool | None = None) -> str:
        if not self.wid_present or self.wid == 0:
            return s
        fill = self.padding(self.wid - len(s), self.zero if zero is None else zero)
        return s + fill if self.minus else fill + s

    # -- printArg -----------------------------------------------------------------------------------

    def arg(self, a: Any, verb: str) -> str:
        if verb == "T":
            return self.fmt_s(typename(a))
        if isinstance(a, bool):
            if verb in "tv":
                return self.pad("true" if a else "false")
            return self.bad_verb(a, verb)
        if isinstance(a, int):
            if INT64_MIN <= a <= INT64_MAX:
                return self.int64(a, verb)
            return self.big_int(a, verb)
        if isinstance(a, float):
            return self.float64(a, verb)
        return self.string(a, verb)

    def bad_verb(self, a: Any, verb: str) -> str:
        return f"%!{verb}({typename(a)}={self.arg(a, 'v')})"

    # -- integers -----------------------------------------------------------------------------------

    def int64(self, a: int, verb: str) -> str:
        if verb in "vd":
            return self.integer(a, 10, verb, False)
        if verb in "bo":
            return self.integer(a, 2 if verb == "b" else 8, verb, False)
        if verb in "OxX":
            return self.integer(a, 8 if verb == "O" else 16, verb, verb == "X")
        if verb in "cqU":
            u = a & _UINT64  # Go converts the int64 to uint64 first: -1 is U+FFFFFFFFFFFFFFFF
            if verb == "U":
                return self.unicode(u)
            ch = chr(u) if u <= _MAX_RUNE and not 0xD800 <= u <= 0xDFFF else "\ufffd"
            return self.pad(ch if verb == "c" else quote_rune(ch, self.plus))
        return self.bad_verb(a, verb)

    def integer(self, a: int, base: int, verb: str, upper: bool) -> str:
        """format.go's fmtInteger: precision or the 0 flag as leading zeros, then prefix and sign."""
        negative = a < 0
        u = -a if negative else a
        prec = 0
        if self.prec_present:
            prec = self.prec
            if prec == 0 and u == 0:  # precision 0 and value 0 print nothing but the padding
                return self.padding(self.wid, False)
        elif self.zero and not self.minus and self.wid_present:
            prec = self.wid - (1 if negative or self.plus or self.space else 0)
        digits = _digits(u, base, upper)
        if len(digits) < prec:
            digits = "0" * (prec - len(digits)) + digits
        if self.sharp:
            if base == 2:
                digits = "0b" + digits
            elif base == 8 and digits[0] != "0":
                digits = "0" + digits
            elif base == 16:
                digits = ("0X" if upper else "0x") + digits
        if verb == "O":
            digits = "0o" + digits
        sign = "-" if negative else "+" if self.plus else " " if self.space else ""
        return self.pad(sign + digits, False)

    def unicode(self, u: int) -> str:
        """format.go's fmtUnicode: U+ and at least four hex digits; `#` adds the quoted rune."""
        prec = self.prec if self.prec_present and self.prec > 4 else 4
        s = "U+" + format(u, "X").rjust(prec, "0")
        if self.sharp and u <= _MAX_RUNE and chr(u).isprintable():
            s += f" '{chr(u)}'"
        return self.pad(s, False)

    def big_int(self, a: int, verb: str) -> str:
        """math/big's Int.Format: [left pad][sign][prefix][zeros][digits][right pad]."""
        if verb not in "bdosvxXO":
            return f"%!{verb}(big.Int={a})"
        base = 2 if verb == "b" else 8 if verb in "oO" else 16 if verb in "xX" else 10
        sign = "-" if a < 0 else "+" if self.plus or self.plus_v else " " if self.space else ""
        prefix = ""
        if self.sharp or self.sharp_v:
            prefix = {"b": "0b", "o": "0", "x": "0x", "X": "0X"}.get(verb, "")
        if verb == "O":
            prefix = "0o"
        digits = _digits(abs(a), base, verb == "X")
        zeros = left = right = 0
        if self.prec_present and len(digits) < self.prec:
            zeros = self.prec - len(digits)
        length = len(sign) + len(prefix) + zeros + len(digits)
        if self.wid_present and length < self.wid:
            d = self.wid - length
            if self.minus:
                right = d
            elif self.zero and not self.prec_present:
                zeros = d
            else:
                left = d
        return " " * left + sign + prefix + "0" * zeros + digits + " " * right

    # -- floats -------------------------------------------------------------------------------------

    def float64(self, a: float, verb: str) -> str:
        if verb == "v":
            return self.float(a, "g", -1)
        if verb in "bgGxX":
            return self.float(a, verb, -1)
        if verb in "feE":
            return self.float(a, verb, 6)
        if verb == "F":
            return self.float(a, "f", 6)
        return self.bad_verb(a, verb)

    def float(self, a: float, verb: str, prec: int) -> str:
        """format.go's fmtFloat: strconv's text, then the sign, `#` and zero padding."""
        if self.prec_present:
            prec = self.prec
        num = append_float(a, verb, prec)
        if num[0] not in "+-":
            num = "+" + num
        if self.space and num[0] == "+" and not self.plus:
            num = " " + num[1:]
        if num[1] in "IN":  # infinities and NaN are not padded with zeros; NaN has no sign unless asked
            if num[1] == "N" and not self.space and not self.plus:
                num = num[1:]
            return self.pad(num, False)
        if self.sharp and verb != "b":
            num = self._sharp_float(num, verb, prec)
        if self.plus or num[0] != "+":
            if self.zero and not self.minus and self.wid_present and self.wid > len(num):
                return num[0] + "0" * (self.wid - len(num)) + num[1:]  # the sign before the zeros
            return self.pad(num)
        return self.pad(num[1:])

    @staticmethod
    def _sharp_float(num: str, verb: str, prec: int) -> str:
        """`#`: always a decimal point, and %g/%v/%x keep their trailing zeros (counted as Go counts)."""
        digits = (6 if prec == -1 else prec) if verb in "vgGx" else 0
        tail, has_dot, nonzero = "", False, False
        for i in range(1, len(num)):
            c = num[i]
            if c == ".":
                has_dot = True
            elif c in "pP" or (c in "eE" and verb not in "xX"):
                num, tail = num[:i], num[i:]
                break
            else:
                nonzero = nonzero or c != "0"
                digits -= nonzero
        if not has_dot:
            if num[1:] == "0":
                digits -= 1
            num += "."
        return num + "0" * max(digits, 0) + tail

    # -- strings ------------------------------------------------------------------------------------

    def string(self, a: str, verb: str) -> str:
        if verb == "v":
            return self.fmt_q(a) if self.sharp_v else self.fmt_s(a)
        if verb == "s":
            return self.fmt_s(a)
        if verb in "xX":
            return self.hex_string(a, verb == "X")
        if verb == "q":
            return self.fmt_q(a)
        return self.bad_verb(a, verb)

    def truncate(self, s: str) -> str:
        return s[: self.prec] if self.prec_present else s

    def fmt_s(self, s: str) -> str:
        return self.pad(self.truncate(s))

    def fmt_q(self, s: str) -> str:
        s = self.truncate(s)
        if self.sharp and can_backquote(s):
            return self.pad("`" + s + "`")
        return self.pad(quote(s, self.plus))

    def hex_string(self, s: str, upper: bool) -> str:
        """format.go's fmtSbx: the UTF-8 bytes in hex; ` ` separates bytes, `#` adds 0x (to each with ` `)."""
        b = s.encode("utf-8")
        if self.prec_present and self.prec < len(b):
            b = b[: self.prec]
        if not b:
            return self.padding(self.wid, self.zero) if self.wid_present else ""
        x = "0X" if upper else "0x"
        pairs = [format(c, "02X" if upper else "02x") for c in b]
        if self.space:
            text = " ".join(x + p for p in pairs) if self.sharp else " ".join(pairs)
        else:
            text = (x if self.sharp else "") + "".join(pairs)
        if not self.wid_present or self.wid <= len(text):
            return text
        fill = self.padding(self.wid - len(text), self.zero)
        return text + fill if self.minus else fill + text


def _digits(u: int, base: int, upper: bool) -> str:
    if base == 10:
        return str(u)
    return format(u, {2: "b", 8: "o", 16: "X" if upper else "x"}[base])


def append_float(f: float, verb: str, prec: int) -> str:
    """strconv.AppendFloat(f, verb, prec, 64) for the verbs fmt uses; `prec < 0` is the shortest."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if verb in "gG":
        return format_float_g(f, prec, verb == "G")
    if verb in "xX":
        return _hex_float(f, prec, verb == "X")
    if verb == "b":
        return _binary_float(f)
    if prec >= 0:
        return f"{f:.{prec}{verb}}"  # e, E, f: at least two exponent digits, as Go
    mant, exp = _decompose(repr(f))
    if verb == "f":
        return _plain(mant, exp)
    neg, d = mant.startswith("-"), mant.lstrip("-")
    s = d[0] + ("." + d[1:] if len(d) > 1 else "") + f"e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    s = ("-" if neg else "") + s
    return s.upper() if verb == "E" else s


def _float_bits(f: float) -> tuple[bool, int, int]:
    """Sign, mantissa with its implicit bit, and binary exponent: f = mant * 2**(exp - 52)."""
    m, e = math.frexp(abs(f))
    neg = math.copysign(1.0, f) < 0
    if m == 0:
        return neg, 0, -1022
    mant, exp = int(m * 2**53), e - 1
    if exp < -1022:  # subnormal: Go keeps the exponent at its minimum and the mantissa short
        mant >>= -1022 - exp
        exp = -1022
    return neg, mant, exp


def _binary_float(f: float) -> str:
    neg, mant, exp = _float_bits(f)
    e = exp - 52
    return f"{'-' if neg else ''}{mant}p{'+' if e >= 0 else '-'}{abs(e)}"


def _hex_float(f: float, prec: int, upper: bool) -> str:
    """strconv's %x for a float64: 0x1.<hex>p±dd, the mantissa rounded to `prec` hex digits (half to even)."""
    neg, mant, exp = _float_bits(f)
    if mant == 0:
        exp = 0
    mant <<= 8  # the leading 1 at bit 60
    while mant and not mant & (1 << 60):
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    frac = format(mant & ((1 << 60) - 1), "015x")
    if prec < 0:
        frac = frac.rstrip("0")
    elif prec <= 15:
        frac = frac[:prec]
    else:
        frac += "0" * (prec - 15)
    s = f"{'-' if neg else ''}0x{(mant >> 60) & 1}{'.' + frac if frac else ''}p{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return s.upper() if upper else s
