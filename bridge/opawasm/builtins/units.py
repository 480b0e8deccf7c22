"""units.parse and units.parse_bytes (topdown parse_units.go, parse_bytes.go).

Amounts are exact decimals, as topdown's big.Rat / big.Float are: `decimal` in a context wide
enough for every digit of the amount, so `10e999999Ei` costs a multiplication of two short
coefficients, not a million-digit integer. Exponents of more than six digits are refused, as
topdown refuses them; a result past Python's int() digit limit stays a `BigNumber` (its text).
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, ROUND_DOWN, ROUND_HALF_UP, Context, Decimal
from typing import Any

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import BigNumber

_MAX_EXPONENT_DIGITS = 6
_INT_DIGITS = 4000  # below Python's int() <-> str limit (4300)
_AMOUNT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

_SI: dict[str, Decimal] = {
    unit: Decimal(v) for units, v in (
        (("m",), "0.001"), (("",), 1), (("k", "K"), 10**3), (("ki", "Ki"), 2**10), (("M",), 10**6),
        (("mi", "Mi"), 2**20), (("g", "G"), 10**9), (("gi", "Gi"), 2**30), (("t", "T"), 10**12),
        (("ti", "Ti"), 2**40), (("p", "P"), 10**15), (("pi", "Pi"), 2**50), (("e", "E"), 10**18),
        (("ei", "Ei"), 2**60),
    ) for unit in units
}
_BYTES: dict[str, Decimal] = {
    unit: Decimal(v) for units, v in (
        (("",), 1), (("kb", "k"), 10**3), (("kib", "ki"), 2**10), (("mb", "m"), 10**6), (("mib", "mi"), 2**20),
        (("gb", "g"), 10**9), (("gib", "gi"), 2**30), (("tb", "t"), 10**12), (("tib", "ti"), 2**40),
        (("pb", "p"), 10**15), (("pib", "pi"), 2**50), (("eb", "e"), 10**18), (("eib", "ei"), 2**60),
    ) for unit in units
}


def _split(s: str, name: str) -> tuple[str, str]:
    """topdown's extractNumAndUnit: the amount (digits, '.', an exponent) and the unit after it."""
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if not (c.isdigit() or c in ".+-eE"):
            break
        if c in "eE":
            if i == n - 1 or not (s[i + 1].isdigit() or s[i + 1] in "+-"):
                break
            if s[i + 1] in "+-":
                i += 1
            j = i + 1
            while j < n and s[j].isdigit():
                j += 1
            if j - (i + 1) > _MAX_EXPONENT_DIGITS:
                raise BuiltinError(f"{name}: exponent too large")
        i += 1
    return s[:i], s[i:]


def _amount(num: str, unit: Decimal, err: str) -> tuple[Decimal, Context]:
    if not _AMOUNT.fullmatch(num):
        raise BuiltinError(err)
    ctx = Context(prec=len(num) + 40, Emax=MAX_EMAX, Emin=MIN_EMIN)  # every digit kept: exact
    return ctx.multiply(Decimal(num), unit), ctx


def _integer(d: Decimal) -> int | BigNumber:
    if d.adjusted() < _INT_DIGITS:
        return int(d)
    return BigNumber(f"{d:f}" if d.adjusted() < 2 * _INT_DIGITS else str(d))


@builtin("units.parse")
def units_parse(ctx: EvalContext, s: Any) -> int | float | BigNumber:
    s = need_str(s, 1).replace('"', "")
    if " " in s:
        raise BuiltinError("units.parse: spaces not allowed in resource strings")
    num, unit = _split(s, "units.parse")
    if num == "":
        raise BuiltinError("units.parse: no amount provided")
    if len(unit) > 1:  # only after the first letter: 'm' (milli) and 'M' (mega) differ
        unit = unit[:1] + unit[1:].lower()
    if unit not in _SI:
        raise BuiltinError(f"units.parse: unit {unit} not recognized")
    x, dctx = _amount(num, _SI[unit], "units.parse: could not parse amount to a number")
    if x == x.to_integral_value():
        return _integer(x)
    # big.Rat's FloatString(10): ten decimals, halves away from zero
    return float(x.quantize(Decimal("1e-10"), rounding=ROUND_HALF_UP, context=dctx))


@builtin("units.parse_bytes")
def units_parse_bytes(ctx: EvalContext, s: Any) -> int | BigNumber:
    s = need_str(s, 1).lower().replace('"', "")
    if " " in s:
        raise BuiltinError("units.parse_bytes: spaces not allowed in resource strings")
    num, unit = _split(s, "units.parse_bytes")
    if num == "":
        raise BuiltinError("units.parse_bytes: no byte amount provided")
    if unit not in _BYTES:
        raise BuiltinError(f"units.parse_bytes: byte unit {unit} not recognized")
    if num.isdigit() and len(num) < 20:
        return int(num) * int(_BYTES[unit])  # the common case, without a decimal context
    x, _ = _amount(num, _BYTES[unit], "units.parse_bytes: could not parse byte amount to a number")
    return _integer(x.to_integral_value(rounding=ROUND_DOWN))
