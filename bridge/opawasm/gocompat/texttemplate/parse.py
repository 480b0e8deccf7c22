"""text/template's lexer and parser, for the subset `render` executes.

A template becomes a list of nodes: ("text", s), ("out", pipeline), ("set", "$x", pipeline),
("if"|"with", pipeline, body, else_body), ("range", decls, pipeline, body, else_body). A pipeline
is a list of commands, a command a list of operands: ("lit", v), ("field", names),
("var", "$x", names), ("sub", pipeline), ("chain", operand, names), ("fn", name).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from bridge.opawasm.gocompat.errors import GoError, Unsupported

# actions and functions of text/template that this port does not implement: refused loudly
UNSUPPORTED = {"define", "template", "block", "break", "continue", "slice", "call", "html", "js", "urlquery"}
FUNCS = {"and", "or", "not", "len", "index", "print", "printf", "println", "eq", "ne", "lt", "le", "gt", "ge"}

# -- lexing -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|(?P<decl>:=)|(?P<assign>=)'
    r"|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)|(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<pipe>\|)|(?P<lp>\()|(?P<rp>\))(?P<after>(?:\.[A-Za-z_][A-Za-z0-9_]*)*)|(?P<comma>,))"
)


def _split(tpl: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", inner) chunks, with trim markers applied."""
    out: list[tuple[str, str]] = []
    i = 0
    while True:
        j = tpl.find("{{", i)
        if j < 0:
            out.append(("text", tpl[i:]))
            return out
        text = tpl[i:j]
        k = tpl.find("}}", j + 2)
        if k < 0:
            raise GoError("template: template:1: unclosed action")
        inner = tpl[j + 2 : k]
        if inner.startswith("- ") or inner == "-":
            text = text.rstrip(" \t\r\n")
            inner = inner[1:]
        trim_after = inner.endswith(" -")
        if trim_after:
            inner = inner[:-2]
        out.append(("text", text))
        out.append(("action", inner.strip()))
        i = k + 2
        if trim_after:
            while i < len(tpl) and tpl[i] in " \t\r\n":
                i += 1


def _lex(s: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    s = s.rstrip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if m is None or m.end() == pos:
            raise GoError(f"template: unexpected {s[pos:pos + 10]!r} in command")
        kind = m.lastgroup or ""
        if kind == "after":
            toks.append(("rp", ")"))
            if m.group("after"):
                toks.append(("after", m.group("after")))
        else:
            toks.append((kind, m.group(kind)))
        pos = m.end()
    return toks


# -- parsing ------------------------------------------------------------------------------------


_RANGE_DECL = re.compile(r"^(\$\w*)\s*(?:,\s*(\$\w*)\s*)?:=\s*(.*)$")
_ASSIGN = re.compile(r"^(\$\w*)\s*(:=|=)\s*(.*)$")


def parse(tpl: str) -> list[Any]:
    """The template's nodes; GoError where Go's parser fails, Unsupported outside the subset."""
    return _Parser(tpl).parse()


class _Parser:
    __slots__ = ("chunks", "pos")

    def __init__(self, tpl: str) -> None:
        self.chunks = _split(tpl)
        self.pos = 0

    def parse(self) -> list[Any]:
        nodes, _ = self.block(())
        return nodes

    def block(self, ends: tuple[str, ...]) -> tuple[list[Any], str]:
        """Nodes up to the first action whose keyword is in `ends` (returned with it)."""
        nodes: list[Any] = []
        while self.pos < len(self.chunks):
            kind, val = self.chunks[self.pos]
            self.pos += 1
            if kind == "text":
                if val:
                    nodes.append(("text", val))
                continue
            if val.startswith("/*"):
                if not val.endswith("*/"):
                    raise GoError("template: unclosed comment")
                continue
            word = val.split(None, 1)[0] if val else ""
            if word in ends:
                return nodes, val
            nodes.append(self.action(word, val))
        if ends:
            raise GoError("template: unexpected EOF")
        return nodes, ""

    def action(self, word: str, val: str) -> Any:
        rest = val[len(word):].strip()
        if word in ("if", "with"):
            return self.cond(word, rest)
        if word == "range":
            return self.range(rest)
        if word in UNSUPPORTED:
            raise Unsupported(f"template action {{{{{word}}}}} is not supported by this host")
        if word in ("end", "else"):
            raise GoError(f"template: unexpected {{{{{word}}}}}")
        m = _ASSIGN.match(val)
        if m:
            return ("set", m.group(1), parse_pipeline(m.group(3)))
        return ("out", parse_pipeline(val))

    def cond(self, word: str, rest: str) -> Any:
        """if/with up to and including its {{end}}; `{{else if ...}}` chains share that end."""
        body, end = self.block(("else", "end"))
        els: list[Any] = []
        if end.startswith("else"):
            tail = end[4:].strip()
            w2 = tail.split(None, 1)[0] if tail else ""
            if w2 in ("if", "with"):
                els = [self.cond(w2, tail[len(w2):].strip())]
            else:
                els, _ = self.block(("end",))
        return (word, parse_pipeline(rest), body, els)

    def range(self, rest: str) -> Any:
        decl: list[str] = []
        m = _RANGE_DECL.match(rest)
        if m:
            decl = [v for v in (m.group(1), m.group(2)) if v]
            rest = m.group(3)
        body, end = self.block(("else", "end"))
        els: list[Any] = []
        if end.startswith("else"):
            els, _ = self.block(("end",))
        return ("range", decl, parse_pipeline(rest), body, els)


def parse_pipeline(s: str) -> list[list[Any]]:
    toks = _lex(s)
    if not toks:
        raise GoError("template: missing value for command")
    return _Commands(toks).parse()


class _Commands:
    """A pipeline's commands from its tokens; a parenthesised group is a pipeline of its own."""

    __slots__ = ("pos", "toks")

    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.toks = toks
        self.pos = 0

    def parse(self) -> list[list[Any]]:
        toks = self.toks
        cmds: list[list[Any]] = [[]]
        while self.pos < len(toks):
            if toks[self.pos][0] == "pipe":
                self.pos += 1
                cmds.append([])
                continue
            cmds[-1].append(self.operand())
        if any(not c for c in cmds):
            raise GoError("template: missing command")
        return cmds

    def operand(self) -> Any:
        kind, val = self.toks[self.pos]
        self.pos += 1
        if kind == "lp":
            return self.group()
        return _operand(kind, val)

    def group(self) -> Any:
        toks = self.toks
        depth, start = 1, self.pos
        while self.pos < len(toks) and depth:
            if toks[self.pos][0] == "lp":
                depth += 1
            elif toks[self.pos][0] == "rp":
                depth -= 1
            self.pos += 1
        node: Any = ("sub", _Commands(toks[start : self.pos - 1]).parse())
        if self.pos < len(toks) and toks[self.pos][0] == "after":
            node = ("chain", node, toks[self.pos][1].split(".")[1:])
            self.pos += 1
        return node


def _operand(kind: str, val: str) -> Any:
    if kind in ("str", "raw"):
        return ("lit", msgspec.json.decode(val.encode()) if kind == "str" else val[1:-1])
    if kind == "num":
        return ("lit", int(val) if "." not in val else float(val))
    if kind == "field":
        return ("field", [] if val == "." else val.split(".")[1:])
    if kind == "var":
        parts = val.split(".")
        return ("var", parts[0], parts[1:])
    if kind == "ident":
        if val in ("true", "false"):
            return ("lit", val == "true")
        if val == "nil":
            return ("lit", None)
        if val in UNSUPPORTED:
            raise Unsupported(f"template function {val!r} is not supported by this host")
        if val not in FUNCS:
            raise GoError(f'template: function "{val}" not defined')
        return ("fn", val)
    raise GoError(f"template: unexpected {val!r}")
