"""`glob.match`, `regex.match`, `regex.is_valid` and `regex.find_all_string_submatch_n` on the host,
under the names `hostroute` gives them in the wasm target.

Why the host: OPA's wasm library compiles these patterns inside the guest and keeps them in a
cache that the heap reset of every `opa_eval` clears, so each call recompiles its pattern on every
evaluation (benchmarks/README.md, "OPA's `glob.match` and `regex.match`"). Here a compiled pattern
lives in a bounded LRU across evaluations, as in topdown's caches.

`glob.match` follows topdown (v1/topdown/glob.go) on gobwas/glob: the glob is read with gobwas's
lexer rules and translated into one RE2 program, matched against the whole string:
- `*` any run of non-delimiter characters, `**` any run at all, `?` one non-delimiter character;
- `[abc]` / `[!abc]` one character (not) in the list, `[a-z]` / `[!a-z]` one (not) in the range;
  a class holds one list or one range, nothing else (gobwas refuses `[a-z0-9]`); delimiters do not
  matter inside a class;
- `{a,b}` alternatives, nestable, closed before the end; `,` and `}` are plain text outside a group;
- `\\` makes the next character literal;
- delimiters: `null` none, `[]` the default `["."]`, otherwise one character per element.
A glob gobwas refuses makes the call an error (undefined outside strict mode), as in topdown.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2
from re2 import _re2

from bridge.opawasm.builtins.operands import need_int, need_str, type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.gocompat.regexp import Regexp
from bridge.opawasm.hostroute import host_name

_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_NO_SPAN = (-1, -1)
_OPTIONS = re2.Options()
_OPTIONS.max_mem = 64 << 20  # as gocompat.regexp: RE2's bound on one program
_OPTIONS.log_errors = False
_OPTIONS.dot_nl = True  # `**` and a delimiter-free `*` / `?` take newlines too, as gobwas's matchers do
_DEFAULT_DELIMITERS = (".",)
_TEXT_BREAKERS = "?*[{"
_TERMS_BREAKERS = "?*[{},"
# compiled globs and regexes kept across evaluations: a policy's patterns are few and constant, so
# these bounds are about hostile inputs (a pattern built from the request), not the working set; a
# pattern longer than CACHED_PATTERN_CHARS is compiled for its call only, so the caches cannot hold
# many large programs
GLOB_CACHE_SIZE = 1024
CACHED_PATTERN_CHARS = 4096


def _lit(ch: str) -> str:
    return ch if ch.isascii() and ch.isalnum() else f"\\x{{{ord(ch):x}}}"


def _class(chars: str, negated: bool) -> str:
    return "[" + ("^" if negated else "") + "".join(_lit(c) for c in chars) + "]"


def _syntax(pattern: str, i: int, message: str) -> BuiltinError:
    """gobwas's error: `at` is the byte offset the lexer had reached (just past character `i - 1`)."""
    return BuiltinError(f"glob: syntax error at {len(pattern[:i].encode('utf-8'))}: {message}")


def _text(pattern: str, i: int, breakers: str) -> tuple[str, int]:
    """gobwas's fetchText: literal characters up to a breaker, `\\` escaping the next one."""
    out: list[str] = []
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise _syntax(pattern, n, "trailing backslash" if breakers != "]" else "unexpected end of input")
            out.append(pattern[i + 1])
            i += 2
            continue
        if ch in breakers:
            break
        out.append(ch)
        i += 1
    return "".join(out), i


def _range(pattern: str, i: int) -> tuple[str, int]:
    """gobwas's fetchRange and parserRange from just after `[`: one list or one range, then `]`."""
    n = len(pattern)
    negated = False
    if i < n and pattern[i] == "!":
        negated = True
        i += 1
    if i >= n:
        raise _syntax(pattern, n, "unexpected end of input")
    if i + 1 < n and pattern[i + 1] == "-":
        if i + 3 > n:
            raise _syntax(pattern, n, "unexpected end of input")
        lo, hi = pattern[i], pattern[i + 2]
        i += 3
        if i >= n:
            raise _syntax(pattern, n, "unexpected end of input")
        if pattern[i] != "]":
            raise _syntax(pattern, i + 1, "expected close range character")
        if hi < lo:
            raise _syntax(pattern, i + 1, "range hi character is less than lo")
        return "[" + ("^" if negated else "") + _lit(lo) + "-" + _lit(hi) + "]", i + 1
    chars, i = _text(pattern, i, "]")
    if i >= n:
        raise _syntax(pattern, n, "unexpected end of input")
    if not chars:
        raise _syntax(pattern, i + 1, "could not parse range")
    return _class(chars, negated), i + 1


def translate(pattern: str, delimiters: tuple[str, ...]) -> list[tuple[str | None, str]]:
    """The glob as RE2 pieces (without anchors) matching what gobwas's glob matches, each with its
    literal text where it is plain text outside a group (None otherwise)."""
    if delimiters:
        not_delim = _class("".join(delimiters), True)
        one, any_run = not_delim, not_delim + "*"
    else:
        one, any_run = ".", ".*"
    out: list[tuple[str | None, str]] = []
    depth = 0
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "{":
            depth += 1
            out.append((None, "(?:"))
            i += 1
        elif ch == "," and depth:
            out.append((None, "|"))
            i += 1
        elif ch == "}" and depth:
            depth -= 1
            out.append((None, ")"))
            i += 1
        elif ch == "[":
            cls, i = _range(pattern, i + 1)
            out.append((None, cls))
        elif ch == "?":
            out.append((None, one))
            i += 1
        elif ch == "*":
            wide = pattern.startswith("**", i)
            out.append((None, ".*" if wide else any_run))
            i += 2 if wide else 1
        else:
            text, i = _text(pattern, i, _TERMS_BREAKERS if depth else _TEXT_BREAKERS)
            out.append((None if depth else text, "".join(_lit(c) for c in text)))
    if depth:
        raise _syntax(pattern, n, "unclosed `{`")
    return out


class Glob:
    """A compiled glob. As gobwas does, plain text at the ends is matched as text (a prefix, a
    suffix, the whole glob), so RE2, a C++ call that costs far more than comparing text, runs only
    where the text fits (the prefix and suffix are a necessary condition, RE2 decides)."""

    __slots__ = ("literal", "prefix", "rx", "suffix")

    def __init__(self, pieces: list[tuple[str | None, str]]) -> None:
        texts = [text for text, _ in pieces]
        self.literal = "".join(t for t in texts if t is not None) if None not in texts else None
        self.prefix = "".join(_leading(texts))
        self.suffix = "".join(reversed(_leading(texts[::-1]))) if self.literal is None else ""
        self.rx = None
        if self.literal is None:
            self.rx = _re2.RE2("".join(r for _, r in pieces).encode("utf-8"), _OPTIONS)
            if not self.rx.ok():  # past RE2's memory or nesting bounds (gobwas has none): the call errs
                raise BuiltinError(f"glob: too large for the host's matcher: {self.rx.error()!r}")

    def match(self, value: str) -> bool:
        if self.rx is None:
            return value == self.literal
        if not (value.startswith(self.prefix) and value.endswith(self.suffix)):
            return False
        b = value.encode("utf-8")
        return bool(self.rx.Match(_ANCHOR_BOTH, b, 0, len(b))[0] != _NO_SPAN)


def _leading(texts: list[str | None]) -> list[str]:
    out: list[str] = []
    for t in texts:
        if t is None:
            break
        out.append(t)
    return out


def compile_glob(pattern: str, delimiters: tuple[Any, ...] | None) -> Glob | str:
    """The compiled glob for topdown's operands (delimiters `None` for null), or the error message
    topdown gives them (kept as well, so a bad glob costs one translation, not one per call)."""
    if len(pattern) > CACHED_PATTERN_CHARS:
        return _compile_glob.__wrapped__(pattern, delimiters)
    return _compile_glob(pattern, delimiters)


@lru_cache(maxsize=GLOB_CACHE_SIZE)
def _compile_glob(pattern: str, delimiters: tuple[Any, ...] | None) -> Glob | str:
    try:
        return Glob(translate(pattern, _delimiters(delimiters)))
    except BuiltinError as exc:
        return str(exc)


def _delimiters(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, (list, tuple)):
        raise BuiltinError(f"operand 2 must be one of {{array, null}} but got {type_name(v)}")
    for d in v:
        if not isinstance(d, str):
            raise BuiltinError(f"operand 2 must be array of strings but got array containing {type_name(d)}")
        if len(d) != 1:
            raise BuiltinError("operand 2 must be array of runes but got array containing string")
    return tuple(v) or _DEFAULT_DELIMITERS


@builtin(host_name("glob.match"))
def glob_match(ctx: EvalContext, pattern: Any, delimiters: Any, value: Any) -> bool:
    if type(pattern) is not str:
        need_str(pattern, 1)
    if delimiters is not None and type(delimiters) is not list:
        _delimiters(delimiters)  # raises topdown's operand error
    try:
        glob = compile_glob(pattern, None if delimiters is None else tuple(delimiters))
    except TypeError:  # an element that cannot be a key (an array, an object): not a rune
        _delimiters(delimiters)
        raise
    if type(value) is not str:
        need_str(value, 3)
    if isinstance(glob, str):
        raise BuiltinError(glob)
    return glob.match(value)


def compile_regex(pattern: str) -> Regexp | str:
    """The compiled pattern, or Go's error message for it. Unlike `gocompat.regexp.compile_go`
    (the other regex builtins), duplicate group names are accepted: the pinned opa accepts them
    (checked against `opa eval`), and so did the wasm library these builtins are routed away from."""
    if len(pattern) > CACHED_PATTERN_CHARS:
        return _compile_regex.__wrapped__(pattern)
    return _compile_regex(pattern)


@lru_cache(maxsize=GLOB_CACHE_SIZE)
def _compile_regex(pattern: str) -> Regexp | str:
    try:
        return Regexp(pattern)
    except GoError as exc:
        return str(exc)


def _regex(pattern: str) -> Regexp:
    rx = compile_regex(pattern)
    if isinstance(rx, str):
        raise BuiltinError(rx)
    return rx


@builtin(host_name("regex.match"))
def regex_match(ctx: EvalContext, pattern: Any, value: Any) -> bool:
    pattern, value = need_str(pattern, 1), need_str(value, 2)
    return _regex(pattern).search(value)


@builtin(host_name("regex.is_valid"))
def regex_is_valid(ctx: EvalContext, pattern: Any) -> bool:
    # topdown: an operand that is not a string is simply not a valid pattern
    return isinstance(pattern, str) and not isinstance(compile_regex(pattern), str)


@builtin(host_name("regex.find_all_string_submatch_n"))
def regex_find_all_string_submatch_n(ctx: EvalContext, pattern: Any, value: Any, n: Any) -> list[list[str]]:
    pattern, value, n = need_str(pattern, 1), need_str(value, 2), need_int(n, 3)
    b = value.encode("utf-8")
    return [[b[a:z].decode("utf-8", "replace") if a >= 0 else "" for a, z in m] for m in _regex(pattern).all_matches(b, n)]
