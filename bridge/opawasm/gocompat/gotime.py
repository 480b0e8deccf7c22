"""Go's time package as OPA's time builtins use it: reference-time layouts (`Format`, `Parse`),
durations (`ParseDuration`, plus OPA's `d`, `w`, `y` units) and instants with nanoseconds."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from bridge.opawasm.gocompat.errors import GoError

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
            # a run of 0s or 9s after '.' or ',' is fractional seconds wherever it stands, unless
            # a digit follows the run (nextStdChunk)
            m = re.match(r"[.,](0+|9+)(?!\d)", layout[i:])
            if m and i + 1 < n:
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



def _zone_name(dt: datetime) -> str:
    name = dt.tzname() or "UTC"
    if not re.fullmatch(r"[A-Z]{3,5}", name):
        off = _offset(dt)
        name = _fmt_offset(off, "-07") if off % 3600 == 0 else _fmt_offset(off, "-0700")
    return name


# the text of each layout token except zone offsets and fractions, which take the token itself
_FORMAT: dict[str, Callable[[datetime], str]] = {
    "2006": lambda dt: f"{dt.year:04d}",
    "06": lambda dt: f"{dt.year % 100:02d}",
    "January": lambda dt: MONTHS[dt.month - 1],
    "Jan": lambda dt: MONTHS[dt.month - 1][:3],
    "01": lambda dt: f"{dt.month:02d}",
    "1": lambda dt: str(dt.month),
    "Monday": lambda dt: DAYS[dt.weekday()],
    "Mon": lambda dt: DAYS[dt.weekday()][:3],
    "02": lambda dt: f"{dt.day:02d}",
    "_2": lambda dt: f"{dt.day:2d}",
    "2": lambda dt: str(dt.day),
    "002": lambda dt: f"{dt.timetuple().tm_yday:03d}",
    "15": lambda dt: f"{dt.hour:02d}",
    "03": lambda dt: f"{dt.hour % 12 or 12:02d}",
    "3": lambda dt: str(dt.hour % 12 or 12),
    "04": lambda dt: f"{dt.minute:02d}",
    "4": lambda dt: str(dt.minute),
    "05": lambda dt: f"{dt.second:02d}",
    "5": lambda dt: str(dt.second),
    "PM": lambda dt: "PM" if dt.hour >= 12 else "AM",
    "pm": lambda dt: "pm" if dt.hour >= 12 else "am",
    "MST": _zone_name,
}


def _fraction(ns: int, tok: str) -> str:
    """`.000`/`,000` (fixed digits) or `.999` (trailing zeros dropped, nothing when zero)."""
    frac = f"{ns:09d}"[: len(tok) - 1]
    if tok[1] == "9":
        frac = frac.rstrip("0")
        return tok[0] + frac if frac else ""
    return tok[0] + frac


def format_time(t: GoTime, layout: str) -> str:
    """Go's Time.Format."""
    dt, out = t.dt, []
    for kind, tok in layout_tokens(layout):
        if kind == "lit":
            out.append(tok)
        elif tok in _FORMAT:
            out.append(_FORMAT[tok](dt))
        elif tok[0] in "Z-":
            out.append(_fmt_offset(_offset(dt), tok))
        elif tok[0] in ".,":
            out.append(_fraction(t.ns, tok))
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


def parse_time(layout: str, value: str) -> GoTime:
    """Go's time.Parse (the subset of layouts OPA's policies use)."""
    m = _parse_rx(layout).match(value)
    if m is None:
        raise GoError(f'parsing time "{value}" as "{layout}": cannot parse')
    g = m.groupdict()
    year = int(g["year"]) if g.get("year") else (int(g["yy"]) + (1900 if int(g["yy"]) >= 69 else 2000) if g.get("yy") else 0)
    month = 1
    if g.get("month"):
        month = int(g["month"])
    elif g.get("mon"):
        names = [x[:3].lower() for x in MONTHS]
        if g["mon"].lower() not in names:
            raise GoError(f'parsing time "{value}": month out of range')
        month = names.index(g["mon"].lower()) + 1
    elif g.get("monthname"):
        names = [x.lower() for x in MONTHS]
        if g["monthname"].lower() not in names:
            raise GoError(f'parsing time "{value}": month out of range')
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
        raise GoError(f'parsing time "{value}": value out of range')
    tz: Any = UTC
    off = g.get("off")
    if off and off != "Z":
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        h, mi, s = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
        if h > 24 or mi > 60 or s > 60:
            raise GoError(f'parsing time "{value}": time zone offset out of range')
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
        raise GoError(f'parsing time "{value}": day out of range') from None
    return GoTime(dt, ns)


# -- durations ----------------------------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000,
          "w": 7 * 86_400_000_000_000, "y": 365 * 86_400_000_000_000}


def parse_duration(s: str) -> int:
    orig = s
    if s == "":
        raise GoError(f'time: invalid duration "{orig}"')
    neg = False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise GoError(f'time: invalid duration "{orig}"')
    total = 0
    for m in re.finditer(r"(\d*\.?\d*)([a-zµμ]+)|(.)", s):
        num, unit, bad = m.groups()
        if bad is not None or not num or num == "." or unit not in _UNITS:
            if unit and unit not in _UNITS and num:
                raise GoError(f'time: unknown unit "{unit}" in duration "{orig}"')
            if not num and unit:
                raise GoError(f'time: invalid duration "{orig}"')
            raise GoError(f'time: invalid duration "{orig}"')
        if "." in num:
            ip, fp = num.split(".")
            v = int(ip or 0) * _UNITS[unit] + (int(fp) * _UNITS[unit] // 10 ** len(fp) if fp else 0)
        else:
            v = int(num) * _UNITS[unit]
        total += v
    if total > 2**63 - 1 + (1 if neg else 0):
        raise GoError(f'time: invalid duration "{orig}"')
    return -total if neg else total
