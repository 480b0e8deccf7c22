"""time.* builtins (topdown time.go), including Go's reference-time layouts for parse/format."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.opawasm.builtins import EvalContext, builtin
from bridge.opawasm.builtins.strings import need_int, need_str, type_name
from bridge.opawasm.errors import BuiltinError

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_NS, MAX_NS = -(2**63), 2**63 - 1

ACCEPTED = {
    "ANSIC": "Mon Jan _2 15:04:05 2006",
    "UnixDate": "Mon Jan _2 15:04:05 MST 2006",
    "RubyDate": "Mon Jan 02 15:04:05 -0700 2006",
    "RFC822": "02 Jan 06 15:04 MST",
    "RFC822Z": "02 Jan 06 15:04 -0700",
    "RFC850": "Monday, 02-Jan-06 15:04:05 MST",
    "RFC1123": "Mon, 02 Jan 2006 15:04:05 MST",
    "RFC1123Z": "Mon, 02 Jan 2006 15:04:05 -0700",
    "RFC3339": "2006-01-02T15:04:05Z07:00",
    "RFC3339Nano": "2006-01-02T15:04:05.999999999Z07:00",
}
RFC3339 = ACCEPTED["RFC3339"]
RFC3339_NANO = ACCEPTED["RFC3339Nano"]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


class GoTime:
    """A wall-clock instant in a location, with nanoseconds (datetime only keeps microseconds)."""

    __slots__ = ("dt", "ns")

    def __init__(self, dt: datetime, ns: int) -> None:
        self.dt = dt  # aware, microsecond-truncated
        self.ns = ns  # nanoseconds within the second

    @classmethod
    def from_unix_ns(cls, ns: int, tz: Any = UTC) -> GoTime:
        secs, rem = divmod(ns, 1_000_000_000)
        dt = (EPOCH + timedelta(seconds=secs)).astimezone(tz)
        return cls(dt, rem)

    def unix_ns(self) -> int:
        d = self.dt.replace(microsecond=0) - EPOCH
        return (d.days * 86400 + d.seconds) * 1_000_000_000 + self.ns


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


# -- Go layout tokens ---------------------------------------------------------------------------

_STD = [
    "January", "Jan", "Monday", "Mon", "MST", "2006", "-07:00:00", "-070000", "-07:00", "-0700", "-07",
    "Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07", "002", "01", "02", "03", "04", "05", "06", "_2",
    "15", "PM", "pm", "1", "2", "3", "4", "5",
]


@lru_cache(maxsize=256)
def layout_tokens(layout: str) -> list[tuple[str, str]]:
    """Split a Go layout into ("lit", text) and ("std", token) chunks, like time.nextStdChunk."""
    out: list[tuple[str, str]] = []
    i, n, lit = 0, len(layout), []
    while i < n:
        c = layout[i]
        matched = None
        if c in ".,":
            m = re.match(r"[.,](0+|9+)(?!\d)", layout[i:])
            if m and i + 1 < n:
                # Go only treats it as fraction when following seconds or at any place? (any place)
                matched = m.group(0)
        if matched is None:
            for tok in _STD:
                if layout.startswith(tok, i):
                    if tok == "Jan" and layout.startswith("January", i):
                        tok = "January"
                    if tok == "Mon" and layout.startswith("Monday", i):
                        tok = "Monday"
                    if tok in ("2006",) or not (tok == "2" and layout.startswith("2006", i)):
                        matched = tok
                        break
            if matched == "Mon" and i + 3 < n and layout[i + 3].islower() and not layout.startswith("Monday", i):
                matched = None  # "Month" is not Mon + th
        if matched is None:
            lit.append(c)
            i += 1
            continue
        if lit:
            out.append(("lit", "".join(lit)))
            lit = []
        out.append(("std", matched))
        i += len(matched)
    if lit:
        out.append(("lit", "".join(lit)))
    return out


def _offset(dt: datetime) -> int:
    off = dt.utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def _fmt_offset(secs: int, tok: str) -> str:
    if tok.startswith("Z") and secs == 0:
        return "Z"
    sign = "-" if secs < 0 else "+"
    secs = abs(secs)
    h, m, s = secs // 3600, (secs // 60) % 60, secs % 60
    body = tok.lstrip("Z-")
    if body == "07":
        return f"{sign}{h:02d}"
    if body == "0700":
        return f"{sign}{h:02d}{m:02d}"
    if body == "07:00":
        return f"{sign}{h:02d}:{m:02d}"
    if body == "070000":
        return f"{sign}{h:02d}{m:02d}{s:02d}"
    return f"{sign}{h:02d}:{m:02d}:{s:02d}"


def go_format(t: GoTime, layout: str) -> str:
    dt, out = t.dt, []
    for kind, tok in layout_tokens(layout):
        if kind == "lit":
            out.append(tok)
            continue
        if tok == "2006":
            out.append(f"{dt.year:04d}")
        elif tok == "06":
            out.append(f"{dt.year % 100:02d}")
        elif tok == "January":
            out.append(MONTHS[dt.month - 1])
        elif tok == "Jan":
            out.append(MONTHS[dt.month - 1][:3])
        elif tok == "01":
            out.append(f"{dt.month:02d}")
        elif tok == "1":
            out.append(str(dt.month))
        elif tok == "Monday":
            out.append(DAYS[dt.weekday()])
        elif tok == "Mon":
            out.append(DAYS[dt.weekday()][:3])
        elif tok == "02":
            out.append(f"{dt.day:02d}")
        elif tok == "_2":
            out.append(f"{dt.day:2d}")
        elif tok == "2":
            out.append(str(dt.day))
        elif tok == "002":
            out.append(f"{dt.timetuple().tm_yday:03d}")
        elif tok == "15":
            out.append(f"{dt.hour:02d}")
        elif tok in ("03", "3"):
            h = dt.hour % 12 or 12
            out.append(f"{h:02d}" if tok == "03" else str(h))
        elif tok == "04":
            out.append(f"{dt.minute:02d}")
        elif tok == "4":
            out.append(str(dt.minute))
        elif tok == "05":
            out.append(f"{dt.second:02d}")
        elif tok == "5":
            out.append(str(dt.second))
        elif tok == "PM":
            out.append("PM" if dt.hour >= 12 else "AM")
        elif tok == "pm":
            out.append("pm" if dt.hour >= 12 else "am")
        elif tok == "MST":
            name = dt.tzname() or "UTC"
            if not re.fullmatch(r"[A-Z]{3,5}", name):
                off = _offset(dt)
                name = _fmt_offset(off, "-07") if off % 3600 == 0 else _fmt_offset(off, "-0700")
            out.append(name)
        elif tok[0] in "Z-":
            out.append(_fmt_offset(_offset(dt), tok))
        elif tok[0] in ".,":
            digits = len(tok) - 1
            frac = f"{t.ns:09d}"[:digits]
            if tok[1] == "9":
                frac = frac.rstrip("0")
                out.append(tok[0] + frac if frac else "")
            else:
                out.append(tok[0] + frac)
    return "".join(out)


_TOK_RX = {
    "2006": r"(?P<year>\d{4})", "06": r"(?P<yy>\d{2})", "January": r"(?P<monthname>[A-Za-z]+)",
    "Jan": r"(?P<mon>[A-Za-z]{3})", "01": r"(?P<month>\d{2})", "1": r"(?P<month>\d{1,2})",
    "Monday": r"(?P<dayname>[A-Za-z]+)", "Mon": r"(?P<dayabbr>[A-Za-z]{3})", "02": r"(?P<day>\d{2})",
    "_2": r" ?(?P<day>\d{1,2})", "2": r"(?P<day>\d{1,2})", "002": r"(?P<yday>\d{3})",
    "15": r"(?P<hour>\d{1,2})", "03": r"(?P<hour12>\d{2})", "3": r"(?P<hour12>\d{1,2})",
    "04": r"(?P<minute>\d{2})", "4": r"(?P<minute>\d{1,2})", "05": r"(?P<second>\d{2})(?P<frac>[.,]\d+)?",
    "5": r"(?P<second>\d{1,2})(?P<frac>[.,]\d+)?", "PM": r"(?P<ampm>AM|PM)", "pm": r"(?P<ampm>am|pm)",
    "MST": r"(?P<tzname>[A-Z]{3,5}|[+-]\d{2,4})",
}


@lru_cache(maxsize=256)
def _parse_rx(layout: str) -> re.Pattern[str]:
    parts = []
    used: set[str] = set()
    for kind, tok in layout_tokens(layout):
        if kind == "lit":
            parts.append(re.escape(tok))
            continue
        if tok[0] in ".,":
            parts.append(r"(?P<frac2>[.,]\d+)" if tok[1] == "0" else r"(?P<frac2>[.,]\d+)?")
            continue
        if tok[0] == "Z":
            body = {"Z07": r"[+-]\d{2}", "Z0700": r"[+-]\d{4}", "Z07:00": r"[+-]\d{2}:\d{2}",
                    "Z070000": r"[+-]\d{6}", "Z07:00:00": r"[+-]\d{2}:\d{2}:\d{2}"}[tok]
            parts.append(f"(?P<off>Z|{body})")
            continue
        if tok[0] == "-":
            body = {"-07": r"[+-]\d{2}", "-0700": r"[+-]\d{4}", "-07:00": r"[+-]\d{2}:\d{2}",
                    "-070000": r"[+-]\d{6}", "-07:00:00": r"[+-]\d{2}:\d{2}:\d{2}"}[tok]
            parts.append(f"(?P<off>{body})")
            continue
        rx = _TOK_RX[tok]
        for name in re.findall(r"\?P<(\w+)>", rx):
            if name in used:
                rx = rx.replace(f"?P<{name}>", "?:")
            used.add(name)
        parts.append(rx)
    return re.compile("^" + "".join(parts) + "$")


def go_parse(layout: str, value: str) -> GoTime:
    m = _parse_rx(layout).match(value)
    if m is None:
        raise BuiltinError(f'parsing time "{value}" as "{layout}": cannot parse')
    g = m.groupdict()
    year = int(g["year"]) if g.get("year") else (int(g["yy"]) + (1900 if int(g["yy"]) >= 69 else 2000) if g.get("yy") else 0)
    month = 1
    if g.get("month"):
        month = int(g["month"])
    elif g.get("mon"):
        names = [x[:3].lower() for x in MONTHS]
        if g["mon"].lower() not in names:
            raise BuiltinError(f'parsing time "{value}": month out of range')
        month = names.index(g["mon"].lower()) + 1
    elif g.get("monthname"):
        names = [x.lower() for x in MONTHS]
        if g["monthname"].lower() not in names:
            raise BuiltinError(f'parsing time "{value}": month out of range')
        month = names.index(g["monthname"].lower()) + 1
    day = int(g["day"]) if g.get("day") else 1
    hour = int(g["hour"]) if g.get("hour") else 0
    if g.get("hour12"):
        hour = int(g["hour12"]) % 12
        if (g.get("ampm") or "").lower() == "pm":
            hour += 12
    minute = int(g["minute"]) if g.get("minute") else 0
    second = int(g["second"]) if g.get("second") else 0
    frac = g.get("frac") or g.get("frac2") or ""
    ns = int((frac[1:] + "000000000")[:9]) if frac else 0
    if not (1 <= month <= 12) or hour > 23 or minute > 59 or second > 59:
        raise BuiltinError(f'parsing time "{value}": value out of range')
    tz: Any = UTC
    off = g.get("off")
    if off and off != "Z":
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        h, mi, s = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
        if h > 24 or mi > 60 or s > 60:
            raise BuiltinError(f'parsing time "{value}": time zone offset out of range')
        tz = timezone(sign * timedelta(hours=h, minutes=mi, seconds=s))
    elif g.get("tzname") and g["tzname"][0] in "+-":
        t = g["tzname"]
        tz = timezone((-1 if t[0] == "-" else 1) * timedelta(hours=int(t[1:3]), minutes=int(t[3:5] or 0)))
    try:
        if g.get("yday") and not g.get("day"):
            dt = datetime(year, 1, 1, hour, minute, second, tzinfo=tz) + timedelta(days=int(g["yday"]) - 1)
        else:
            dt = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        raise BuiltinError(f'parsing time "{value}": day out of range') from None
    return GoTime(dt, ns)


# -- durations ----------------------------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000,
          "w": 7 * 86_400_000_000_000, "y": 365 * 86_400_000_000_000}


def parse_duration(s: str) -> int:
    orig = s
    if s == "":
        raise BuiltinError(f'time: invalid duration "{orig}"')
    neg = False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise BuiltinError(f'time: invalid duration "{orig}"')
    total = 0
    for m in re.finditer(r"(\d*\.?\d*)([a-zµμ]+)|(.)", s):
        num, unit, bad = m.groups()
        if bad is not None or not num or num == "." or unit not in _UNITS:
            if unit and unit not in _UNITS and num:
                raise BuiltinError(f'time: unknown unit "{unit}" in duration "{orig}"')
            if not num and unit:
                raise BuiltinError(f'time: invalid duration "{orig}"')
            raise BuiltinError(f'time: invalid duration "{orig}"')
        if "." in num:
            ip, fp = num.split(".")
            v = int(ip or 0) * _UNITS[unit] + (int(fp) * _UNITS[unit] // 10 ** len(fp) if fp else 0)
        else:
            v = int(num) * _UNITS[unit]
        total += v
    if total > 2**63 - 1 + (1 if neg else 0):
        raise BuiltinError(f'time: invalid duration "{orig}"')
    return -total if neg else total


# -- builtins -----------------------------------------------------------------------------------


@builtin("time.now_ns")
def now_ns(ctx: EvalContext) -> int:
    return ctx.now_ns


@builtin("time.parse_ns")
def parse_ns(ctx: EvalContext, layout: Any, value: Any) -> int:
    layout, value = need_str(layout, 1), need_str(value, 2)
    return _safe(go_parse(ACCEPTED.get(layout, layout), value))


@builtin("time.parse_rfc3339_ns")
def parse_rfc3339_ns(ctx: EvalContext, value: Any) -> int:
    return _safe(go_parse(RFC3339, need_str(value, 1)))


@builtin("time.parse_duration_ns")
def parse_duration_ns(ctx: EvalContext, value: Any) -> int:
    return parse_duration(need_str(value, 1))


@builtin("time.format")
def time_format(ctx: EvalContext, x: Any) -> str:
    t, layout = tz_time(x)
    layout = ACCEPTED.get(layout, layout) if layout else RFC3339_NANO
    return go_format(t, layout)


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
