"""time.* builtins (topdown time.go) over the Go time port (`gocompat.gotime`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.opawasm.builtins.operands import need_int, need_str, type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.gotime import (
    ACCEPTED,
    DAYS,
    MAX_NS,
    MIN_NS,
    RFC3339,
    RFC3339_NANO,
    GoTime,
    format_time,
    parse_duration,
    parse_time,
)


def _tz(name: str) -> Any:
    if name in ("", "UTC"):
        return UTC
    if name == "Local":
        return datetime.now().astimezone().tzinfo
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BuiltinError(f"unknown time zone {name}") from None


def tz_time(v: Any) -> tuple[GoTime, str]:
    layout = ""
    tz: Any = UTC
    if isinstance(v, (list, tuple)):
        if len(v) == 0:
            raise BuiltinError("operand 1 must be either number (ns) or [number (ns), string (tz)]")
        ns_v = v[0]
        if len(v) > 1:
            tz = _tz(need_str(v[1], 1))
        if len(v) > 2:
            layout = need_str(v[2], 1)
    else:
        ns_v = v
    if isinstance(ns_v, bool) or not isinstance(ns_v, (int, float)):
        raise BuiltinError(f"operand 1 must be number but got {type_name(ns_v)}")
    ns = int(ns_v)
    if ns_v != ns or ns < MIN_NS or ns > MAX_NS:
        if isinstance(ns_v, float) and not ns_v.is_integer():
            ns = int(ns_v)  # Go's big.Float -> Int64 truncates
        if ns < MIN_NS or ns > MAX_NS:
            raise BuiltinError("timestamp too big")
    return GoTime.from_unix_ns(ns, tz), layout


def _safe(t: GoTime) -> int:
    ns = t.unix_ns()
    if ns < MIN_NS or ns > MAX_NS:
        raise BuiltinError("time outside of valid range")
    return ns


# -- builtins -----------------------------------------------------------------------------------


@builtin("time.now_ns")
def now_ns(ctx: EvalContext) -> int:
    return ctx.now_ns


@builtin("time.parse_ns")
def parse_ns(ctx: EvalContext, layout: Any, value: Any) -> int:
    layout, value = need_str(layout, 1), need_str(value, 2)
    return _safe(parse_time(ACCEPTED.get(layout, layout), value))


@builtin("time.parse_rfc3339_ns")
def parse_rfc3339_ns(ctx: EvalContext, value: Any) -> int:
    return _safe(parse_time(RFC3339, need_str(value, 1)))


@builtin("time.parse_duration_ns")
def parse_duration_ns(ctx: EvalContext, value: Any) -> int:
    return parse_duration(need_str(value, 1))


@builtin("time.format")
def time_format(ctx: EvalContext, x: Any) -> str:
    t, layout = tz_time(x)
    layout = ACCEPTED.get(layout, layout) if layout else RFC3339_NANO
    return format_time(t, layout)


@builtin("time.date")
def time_date(ctx: EvalContext, x: Any) -> list[int]:
    t, _ = tz_time(x)
    return [t.dt.year, t.dt.month, t.dt.day]


@builtin("time.clock")
def time_clock(ctx: EvalContext, x: Any) -> list[int]:
    t, _ = tz_time(x)
    return [t.dt.hour, t.dt.minute, t.dt.second]


@builtin("time.weekday")
def time_weekday(ctx: EvalContext, x: Any) -> str:
    t, _ = tz_time(x)
    return DAYS[t.dt.weekday()]


@builtin("time.add_date")
def time_add_date(ctx: EvalContext, x: Any, years: Any, months: Any, days: Any) -> int:
    t, _ = tz_time(x)
    y, mo, d = need_int(years, 2), need_int(months, 3), need_int(days, 4)
    dt = t.dt
    total_m = dt.month - 1 + mo
    ny, nm = dt.year + y + total_m // 12, total_m % 12 + 1
    try:
        base = dt.replace(year=ny, month=nm, day=1)
    except ValueError:
        raise BuiltinError("time outside of valid range") from None
    res = base + timedelta(days=dt.day - 1 + d)
    return _safe(GoTime(res, t.ns))


@builtin("time.diff")
def time_diff(ctx: EvalContext, a: Any, b: Any) -> list[int]:
    t1, _ = tz_time(a)
    t2, _ = tz_time(b)
    d2 = t2.dt.astimezone(t1.dt.tzinfo)
    t2 = GoTime(d2, t2.ns)
    if t1.unix_ns() > t2.unix_ns():
        t1, t2 = t2, t1
    x, y = t1.dt, t2.dt
    year, month, day = y.year - x.year, y.month - x.month, y.day - x.day
    hour, minute, sec = y.hour - x.hour, y.minute - x.minute, y.second - x.second
    if sec < 0:
        sec += 60
        minute -= 1
    if minute < 0:
        minute += 60
        hour -= 1
    if hour < 0:
        hour += 24
        day -= 1
    if day < 0:
        # days in x's month: Go normalises day 32 of the month and takes 32 - that day
        first = datetime(x.year, x.month, 1)
        dim = ((first.replace(day=28) + timedelta(days=4)).replace(day=1) - first).days
        day += dim
        month -= 1
    if month < 0:
        month += 12
        year -= 1
    return [year, month, day, hour, minute, sec]
