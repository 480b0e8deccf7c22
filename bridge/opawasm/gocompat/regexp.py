"""Go's `regexp` on RE2 (the `google-re2` binding): the same engine family Go's regexp implements
(linear time, no backtracking, RE2 syntax), so a policy's pattern matches as it does in OPA and a
pathological one (`(a+)+$`) costs linear time instead of Python re's exponential backtracking.

What Go adds on top is ported here: its parse-error messages, `Expand` for replacement templates
($1, ${name}, $$), FindAll's rule for empty matches, and Split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import re2

from bridge.opawasm.gocompat.errors import GoError

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is the policy's error, not a line on the process's stderr
_OPTIONS.max_mem = 64 << 20  # RE2's bound on one compiled program ("expression too large" past it)

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
_NAMED = re.compile(r"\(\?P?<([^>]*)>")


def _go_error(pattern: str, exc: Exception) -> GoError:
    text = str(exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else exc)
    code, _, arg = text.partition(": ")
    if code == "invalid perl operator" and arg.startswith("(?<"):
        # Go reads `(?<` as the start of a named group (`(?<name>`), so a lookbehind is that
        return GoError(f"error parsing regexp: invalid named capture: `{pattern[pattern.find(arg):]}`")
    for re2_code, go_code in _GO_ERRORS:
        if code.startswith(re2_code):
            return GoError(f"error parsing regexp: {go_code}: `{arg or pattern}`")
    return GoError(f"error parsing regexp: {text}")


@lru_cache(maxsize=1024)
def compile_go(pattern: str) -> Any:
    """The compiled pattern; a pattern Go refuses raises GoError with Go's message."""
    names = _NAMED.findall(pattern)
    if len(names) != len(set(names)):
        dup = next(n for n in names if names.count(n) > 1)
        raise GoError(f"error parsing regexp: duplicate capture group name: `{dup}`")
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        raise _go_error(pattern, exc) from None


def find_all(rx: Any, s: str, n: int = -1) -> Iterator[Any]:
    """Go's FindAll: at most n matches (all when n < 0), none empty right after the previous one."""
    found, prev_end = 0, -1
    for m in rx.finditer(s):
        if 0 <= n <= found:
            return
        if m.start() == m.end() == prev_end:
            continue
        found += 1
        prev_end = m.end()
        yield m


def expand(template: str, m: Any) -> str:
    """Go's Regexp.Expand: $1, ${1}, $name, ${name}; $$ is a literal $; an unknown group is ""."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if template[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        name, i = _group_name(template, i)
        if name is None:
            out.append("$")
            continue
        out.append(_group(m, name))
    return "".join(out)


_WORD = re.compile(r"\w+")


def _group_name(template: str, i: int) -> tuple[str | None, int]:
    """The group named at template[i] == '$', and where the text after it starts."""
    if template[i + 1] == "{":
        j = template.find("}", i + 2)
        name = template[i + 2 : j] if j > 0 else ""
        if j < 0 or not _WORD.fullmatch(name):
            return None, i + 1
        return name, j + 1
    mm = _WORD.match(template, i + 1)
    if not mm:
        return None, i + 1
    return mm.group(0), mm.end()


def _group(m: Any, name: str) -> str:
    try:
        g = m.group(int(name)) if name.isdigit() else m.group(name)
    except (IndexError, KeyError, re2.error):
        return ""
    return g or ""


def split(rx: Any, s: str, n: int = -1) -> list[str]:
    """Go's Regexp.Split(s, n)."""
    if n == 0:
        return []
    if rx.pattern and s == "":
        return [""]
    out: list[str] = []
    beg = end = 0
    for m in find_all(rx, s, -1):
        if 0 < n <= len(out) + 1:
            break
        end = m.start()
        if m.end() == 0:
            continue
        out.append(s[beg:end])
        beg = m.end()
    if end != len(s):
        out.append(s[beg:])
    return out


def quote_meta(s: str) -> str:
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in s)
