"""Just enough Rego lexing to move a case's documents under a namespace, and a reader for the
`input_term` literals of the suite.

Namespacing lets many cases share one `opa build`: every reference to the root document `data`
becomes `data.<ns>`, `package p` becomes `package <ns>.p`, and the case's base data goes in as
`{"<ns>": data}`. Inside the case, `data.<ns>` then holds exactly what `data` held in a build of
its own, so a bare `data` (`x = data`, `walk(data)`) keeps its meaning too. The lexer copies
comments, "strings" and `raw strings` untouched, leaves field accesses (`x.data`) alone, and
recurses into the `{...}` expressions of template strings ($"..." and $`...`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from bridge.opawasm.values import RegoSet, encode_value

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_PACKAGE = re.compile(r"\A((?:\s|#[^\n]*(?:\n|\Z))*)package([ \t]+)")


class _Rewriter:
    def __init__(self, src: str, ns: str) -> None:
        self.s = src
        self.ns = ns
        self.out: list[str] = []
        self.last = ""  # the last significant character copied ("a" after an identifier)

    def code(self, i: int, *, nested: bool = False) -> int:
        """Copy code from i; nested: stop after the `}` that closes a template expression."""
        s, n, depth = self.s, len(self.s), 0
        while i < n:
            c = s[i]
            if c == "#":
                j = s.find("\n", i)
                j = n if j < 0 else j
                self.out.append(s[i:j])
                i = j
            elif c in "\"`":
                i = self.string(i, c)
            elif c == "$" and s[i + 1 : i + 2] in ('"', "`"):
                i = self.template(i)
            elif c == "_" or c.isalpha():
                m = _IDENT.match(s, i)
                assert m is not None
                self.ident(m.group(0))
                i = m.end()
            elif c.isdigit():
                m = _NUMBER.match(s, i)
                assert m is not None
                self.out.append(m.group(0))
                self.last, i = "0", m.end()
            else:
                if nested and c == "}" and depth == 0:
                    self.out.append(c)
                    return i + 1
                depth += (c == "{") - (c == "}")
                self.out.append(c)
                self.last = c if not c.isspace() else self.last
                i += 1
        return i

    def ident(self, word: str) -> None:
        self.out.append(f"data.{self.ns}" if word == "data" and self.last != "." else word)
        self.last = "a"

    def string(self, i: int, quote: str) -> int:
        s, j = self.s, i + 1
        while j < len(s) and s[j] != quote:
            j += 2 if quote == '"' and s[j] == "\\" else 1
        self.out.append(s[i : j + 1])
        self.last = quote
        return j + 1

    def template(self, i: int) -> int:
        s, quote = self.s, self.s[i + 1]
        self.out.append(s[i : i + 2])
        j = i + 2
        while j < len(s):
            c = s[j]
            if c == "\\":
                self.out.append(s[j : j + 2])
                j += 2
            elif c == quote:
                self.out.append(c)
                self.last = quote
                return j + 1
            elif c == "{":
                self.out.append(c)
                self.last = "{"
                j = self.code(j + 1, nested=True)
            else:
                self.out.append(c)
                j += 1
        return j


def namespace(src: str, ns: str) -> str:
    """A module (or query) whose documents live under data.<ns>."""
    head = ""
    m = _PACKAGE.match(src)
    if m:
        head, src = src[: m.end()] + ns + ".", src[m.end() :]
    rw = _Rewriter(src, ns)
    rw.code(0)
    return head + "".join(rw.out)


# -- input_term: a Rego term literal (JSON plus sets, set(), trailing commas, non-string keys) ----


class TermSyntaxError(ValueError):
    pass


def input_value_text(term: str) -> bytes:
    """The input_term as value text for opa_value_parse, which is what OPA's wasm SDK hands the
    module (`term.String()`): sets stay sets."""
    p = _TermReader(term)
    value = p.value()
    p.ws()
    if p.i != len(p.s):
        raise TermSyntaxError(f"trailing text at {p.i}: {term[p.i : p.i + 20]!r}")
    return encode_value(value)


class _TermReader:
    _num = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
    _words = (("true", True), ("false", False), ("null", None))

    def __init__(self, s: str) -> None:
        self.s, self.i = s, 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.s[self.i : self.i + 1]

    def value(self) -> Any:
        c = self.peek()
        s, i = self.s, self.i
        if s.startswith("set()", i):
            self.i += 5
            return RegoSet()
        if c == "[":
            self.i += 1
            return self.items("]")
        if c == "{":
            return self.brace()
        if c == '"':
            j = i + 1
            while s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            self.i = j + 1
            return json.loads(s[i : j + 1])
        for word, v in self._words:
            if s.startswith(word, i):
                self.i += len(word)
                return v
        m = self._num.match(s, i)
        if not m:
            raise TermSyntaxError(f"unexpected {s[i : i + 20]!r}")
        self.i = m.end()
        return float(m.group(0)) if m.group(2) or m.group(3) else int(m.group(0))

    def items(self, close: str) -> list[Any]:
        out: list[Any] = []
        while self.peek() != close:
            out.append(self.value())
            if self.peek() == ",":
                self.i += 1
        self.i += 1
        return out

    def brace(self) -> Any:
        self.i += 1
        if self.peek() == "}":
            self.i += 1
            return {}
        first = self.value()
        if self.peek() != ":":
            self._comma()
            return RegoSet([first, *self.items("}")])
        obj: dict[Any, Any] = {}
        key = first
        while True:
            self.i += 1  # ':'
            obj[_hashable(key)] = self.value()
            self._comma()
            if self.peek() == "}":
                self.i += 1
                return obj
            key = self.value()

    def _comma(self) -> bool:
        if self.peek() == ",":
            self.i += 1
            return True
        return False


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k
