"""Go's `regexp` on RE2 (the `google-re2` binding): the same engine family Go's regexp implements
(linear time, no backtracking, RE2 syntax), so a policy's pattern matches as it does in OPA and a
pathological one (`(a+)+$`) costs linear time instead of Python re's exponential backtracking.

What Go adds on top is ported here, on the binding's C++ `RE2.Match` over UTF-8 bytes (its Python
match objects cost more than the match): Go's parse-error messages, the loops of FindAll (no empty
match right after a match) and ReplaceAll (no replacement for an empty match right after a match),
Split, and Expand for replacement templates ($1, ${name}, $$).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import re2
from re2 import _re2

from bridge.opawasm.gocompat.errors import GoError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is the policy's error, not a line on the process's stderr
_OPTIONS.max_mem = 64 << 20  # RE2's bound on one compiled program ("expression too large" past it)
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_SPAN = (-1, -1)

# RE2's error texts as Go's regexp/syntax words them
_GO_ERRORS = (
    ("missing )", "missing closing )"),
    ("missing ]", "missing closing ]"),
    ("unexpected )", "unexpected )"),
    ("bad repetition operator", "invalid nested repetition operator"),
    ("no argument for repetition operator", "missing argument to repetition operator"),
    ("invalid repetition size", "invalid repeat count"),
    ("invalid perl operator", "invalid or unsupported Perl syntax"),
    ("invalid named capture group", "invalid named capture"),
    ("invalid character class range", "invalid character class range"),
    ("invalid character class", "invalid character class"),
    ("invalid escape sequence", "invalid escape sequence"),
    ("trailing \\", "trailing backslash at end of expression"),
    ("invalid UTF-8", "invalid UTF-8"),
    ("pattern too large", "expression too large"),
)

Span = tuple[int, int]


def _go_error(pattern: str, text: str) -> GoError:
    code, _, arg = text.partition(": ")
    if code == "invalid perl operator" and arg.startswith("(?<"):
        # Go reads `(?<` as the start of a named group (`(?<name>`), so a lookbehind is that
        return GoError(f"error parsing regexp: invalid named capture: `{pattern[pattern.find(arg):]}`")
    for re2_code, go_code in _GO_ERRORS:
        if code.startswith(re2_code):
            return GoError(f"error parsing regexp: {go_code}: `{arg or pattern}`")
    return GoError(f"error parsing regexp: {text}")


class Regexp:
    """A compiled pattern; matches are lists of byte spans into the UTF-8 text, one per group."""

    __slots__ = ("groups", "names", "pattern", "rx")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.rx = _re2.RE2(pattern.encode("utf-8"), _OPTIONS)
        if not self.rx.ok():
            err = self.rx.error()
            raise _go_error(pattern, err.decode("utf-8", "replace") if isinstance(err, bytes) else str(err))
        self.groups = self.rx.NumberOfCapturingGroups()
        self.names = {name.decode("utf-8"): index for name, index in self.rx.NamedCapturingGroups()}

    def search(self, text: str) -> bool:
        b = text.encode("utf-8")
        return self.rx.Match(_UNANCHORED, b, 0, len(b))[0] != _NO_SPAN

    def all_matches(self, b: bytes, n: int = -1) -> list[list[Span]]:
        """Go's allMatches: at most n (all when n < 0), an empty match right after a match dropped."""
        out: list[list[Span]] = []
        pos, end, prev_end = 0, len(b), -1
        match = self.rx.Match
        while (n < 0 or len(out) < n) and pos <= end:
            spans = match(_UNANCHORED, b, pos, end)
            if spans[0] == _NO_SPAN:
                break
            start, stop = spans[0]
            accept = True
            if stop == pos:  # an empty match: never right after the previous one; step one rune
                accept = start != prev_end
                pos += _rune_width(b, pos)
            else:
                pos = stop
            prev_end = stop
            if accept:
                out.append(spans)
        return out

    def replace_all(self, b: bytes, template: bytes, check: Callable[[int], None] | None = None) -> bytes:
        """Go's ReplaceAllString: each match replaced by `template` expanded, except an empty match
        right after a match; `check(size)` (if given) sees the output grow, every 1024 matches."""
        out = bytearray()
        last = search = 0
        end = len(b)
        match = self.rx.Match
        count = 0
        while search <= end:
            spans = match(_UNANCHORED, b, search, end)
            if spans[0] == _NO_SPAN:
                break
            start, stop = spans[0]
            out += b[last:start]
            if stop > last or start == 0:
                out += self.expand(template, b, spans)
            last = stop
            if stop >= search + 4:  # past the widest rune at search: Go moves on to the match's end
                search = stop
            else:
                width = _rune_width(b, search)
                search = search + width if search + width > stop else max(stop, search + 1)
            count += 1
            if check is not None and count & 0x3FF == 0:
                check(len(out) + end - last)
        out += b[last:]
        return bytes(out)

    def expand(self, template: bytes, src: bytes, spans: list[Span]) -> bytes:
        """Go's Regexp.Expand: $1, ${1}, $name, ${name}; $$ is a literal $; an unknown group is ""."""
        if b"$" not in template:
            return template
        out = bytearray()
        i, n = 0, len(template)
        while i < n:
            c = template[i]
            if c != 0x24 or i + 1 >= n:  # '$'
                out.append(c)
                i += 1
                continue
            if template[i + 1] == 0x24:
                out.append(0x24)
                i += 2
                continue
            name, i = _group_name(template, i)
            if name is None:
                out.append(0x24)
                continue
            index = int(name) if name.isdigit() else self.names.get(name, -1)
            if 0 <= index < len(spans) and spans[index] != _NO_SPAN:
                out += src[spans[index][0] : spans[index][1]]
        return bytes(out)


_WORD = re.compile(rb"\w+")


def _group_name(template: bytes, i: int) -> tuple[str | None, int]:
    """The group named at template[i] == '$', and where the text after it starts."""
    if template[i + 1] == 0x7B:  # '{'
        j = template.find(b"}", i + 2)
        name = template[i + 2 : j] if j > 0 else b""
        if j < 0 or not _WORD.fullmatch(name):
            return None, i + 1
        return name.decode("utf-8"), j + 1
    mm = _WORD.match(template, i + 1)
    if not mm:
        return None, i + 1
    return mm.group(0).decode("utf-8"), mm.end()


def _rune_width(b: bytes, i: int) -> int:
    """The width in bytes of the UTF-8 sequence at b[i] (1 past the end, as Go steps there)."""
    if i >= len(b):
        return 1
    c = b[i]
    return 1 if c < 0xC0 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4


@lru_cache(maxsize=1024)
def compile_go(pattern: str) -> Regexp:
    """The compiled pattern; a pattern Go refuses raises GoError with Go's message. Two groups may
    share a name, as in Go (`(?P<x>a)(?P<x>b)`: the pinned opa answers every regex builtin with it)."""
    return Regexp(pattern)


def split(rx: Regexp, s: str, n: int = -1) -> list[str]:
    """Go's Regexp.Split(s, n)."""
    if n == 0:
        return []
    if rx.pattern and s == "":
        return [""]
    b = s.encode("utf-8")
    out: list[str] = []
    beg = end = 0
    for spans in rx.all_matches(b, n):
        if 0 < n <= len(out) + 1:
            break
        end = spans[0][0]
        if spans[0][1] != 0:
            out.append(b[beg:end].decode("utf-8", "replace"))
        beg = spans[0][1]
    if end != len(b):
        out.append(b[beg:].decode("utf-8", "replace"))
    return out


def quote_meta(s: str) -> str:
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in s)
