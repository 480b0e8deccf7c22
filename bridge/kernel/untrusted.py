"""Limits on what a caller sends, checked before anything parses it: JSON nesting depth and
numbers in header values.

Why a nesting limit: msgspec, `json` and every recursive walk after them (the WASM value codec,
audit encoding) recurse once per level, so a body of a few kilobytes nested a thousand levels deep
ends in `RecursionError` (a 500) wherever the first recursion runs out. A document deeper than
`MAX_JSON_DEPTH` is refused as the caller's mistake (400) on every edge that takes JSON: the control
plane's HTTP routes, the gateway and the NATS services. No decision document, policy input or
OPA event comes close to the limit.

Why a bounded number: `int()` of a header value with thousands of digits raises ValueError (Python
refuses to convert more than 4,300 digits) or takes quadratic time; a header number is read only
when it has few enough digits to mean something.
"""

from __future__ import annotations

import re

from bridge.kernel.errors import BadRequest

MAX_JSON_DEPTH = 128
MAX_HEADER_DIGITS = 9  # about 31 years in seconds: more than any wait, size or count a header carries

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the byte it escapes
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_PARENS = bytes.maketrans(b"[{]}", b"(())")  # arrays and objects nest alike
_TOO_MANY_OPENERS = {MAX_JSON_DEPTH: b"(" * (MAX_JSON_DEPTH + 1)}
_DIGITS = re.compile(r"\d+")


class NestingTooDeep(BadRequest):
    """JSON nested deeper than the edge accepts."""

    code = "json_too_deep"


class BadHeader(BadRequest):
    """A header value the edge cannot read as the number it must be."""

    code = "bad_header"


def json_depth_exceeds(data: bytes | bytearray | memoryview, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `data` (JSON text, valid or not) nests arrays and objects deeper than `limit`.

    Every step runs in C (bytes methods), so the check costs a fraction of the decode it guards:
    a body with at most `limit` brackets cannot nest deeper (two counts, the common case).
    Otherwise the strings are cut out (escape pairs first, then every other piece between quotes),
    the brackets alone are kept, and innermost pairs `()` are deleted pass by pass: each pass takes
    exactly one level off the deepest balanced part, so a document still holding a pair after
    `limit` passes is deeper than `limit`. What no pass can delete is unbalanced (truncated or
    broken JSON): its unclosed openers plus the passes done bound its depth from above, and that
    bound is what is held to `limit` (an invalid document may be refused a little early).
    """
    raw = bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b"\\" in raw:
        raw = _ESCAPE.sub(b"", raw)
    nest = b"".join(raw.split(b'"')[::2]).translate(_PARENS, _NOT_BRACKETS)
    if _TOO_MANY_OPENERS.get(limit, b"(" * (limit + 1)) in nest:  # the usual hostile shape, found in one search
        return True
    passes = 0
    while b"()" in nest:
        if passes == limit:
            return True
        nest = nest.replace(b"()", b"")
        passes += 1
    return nest.count(b"(") + passes > limit


def check_json_depth(data: bytes | bytearray | memoryview, label: str = "body", limit: int = MAX_JSON_DEPTH) -> None:
    """NestingTooDeep (400) when `data` nests deeper than `limit`; `label` names it in the message."""
    if json_depth_exceeds(data, limit):
        raise NestingTooDeep(f"{label}: JSON nested deeper than {limit} levels of arrays and objects")


def header_number(name: str, value: str, *, maximum: int | None = None) -> int:
    """A non-negative integer header value (or a `name=N` parameter of one): BadHeader (400) when it
    is not digits, longer than `MAX_HEADER_DIGITS`, or above `maximum`."""
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise BadHeader(f"{name}: want a non-negative integer, got {_shown(text)}")
    if len(text) > MAX_HEADER_DIGITS:
        raise BadHeader(f"{name}: {len(text)} digits is too many (at most {MAX_HEADER_DIGITS})")
    number = int(text)
    if maximum is not None and number > maximum:
        raise BadHeader(f"{name}: {number} is above the maximum of {maximum}")
    return number


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
