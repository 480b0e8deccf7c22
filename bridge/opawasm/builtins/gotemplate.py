"""strings.render_template: Go's text/template over OPA's variables (topdown template.go).

OPA turns the variables into Go values with json.Number for numbers, executes the template and
replaces "<no value>" with "<undefined>". This implements the part of text/template that policies
use: field chains, variables, `if`/`else if`/`else`, `range` (with else and `$k, $v :=`), `with`,
pipelines, comments, trim markers, and the functions and, or, not, len, index, print, printf,
println, eq, ne, lt, le, gt, ge. Template errors (what Go would reject) make the call undefined;
a construct outside this subset fails the evaluation (HaltError), so an unimplemented feature can
never quietly turn into "undefined".
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from bridge.opawasm.builtins import EvalContext, builtin
from bridge.opawasm.builtins.gofmt import go_sprintf
from bridge.opawasm.builtins.strings import need_str, type_name
from bridge.opawasm.errors import BuiltinError, HaltError
from bridge.opawasm.values import RegoSet, to_json


class JNum(str):
    """Go's json.Number: a string kind holding the number's JSON text."""


class _NoValue:
    pass


NOVALUE = _NoValue()
_UNSUPPORTED = {"define", "template", "block", "break", "continue", "slice", "call", "html", "js", "urlquery"}
_FUNCS = {"and", "or", "not", "len", "index", "print", "printf", "println", "eq", "ne", "lt", "le", "gt", "ge"}


def _go_values(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return JNum(msgspec.json.encode(v).decode())
    if isinstance(v, list):
        return [_go_values(x) for x in v]
    if isinstance(v, dict):
        return {k: _go_values(x) for k, x in v.items()}
    return v


def _sprint1(v: Any, top: bool = False) -> str:
    if v is NOVALUE:
        return "<no value>"
    if v is None:
        return "<no value>" if top else "<nil>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + " ".join(_sprint1(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_sprint1(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def _go_sprint(args: list[Any]) -> str:
    out = []
    for i, a in enumerate(args):
        # Sprint adds a space between operands when neither is a string
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(_sprint1(a))
    return "".join(out)


def _truth(v: Any) -> bool:
    if v is None or v is NOVALUE or v is False:
        return False
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    if isinstance(v, int) and not isinstance(v, bool):
        return v != 0
    return True


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
            raise BuiltinError('template: template:1: unclosed action')
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
            raise BuiltinError(f"template: unexpected {s[pos:pos + 10]!r} in command")
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


def _parse(tpl: str) -> list[Any]:
    chunks = _split(tpl)
    pos = 0

    def block(ends: tuple[str, ...]) -> tuple[list[Any], str]:
        nonlocal pos
        nodes: list[Any] = []
        while pos < len(chunks):
            kind, val = chunks[pos]
            pos += 1
            if kind == "text":
                if val:
                    nodes.append(("text", val))
                continue
            if val.startswith("/*"):
                if not val.endswith("*/"):
                    raise BuiltinError("template: unclosed comment")
                continue
            word = val.split(None, 1)[0] if val else ""
            rest = val[len(word):].strip()
            if word in ends or (word == "else" and "else" in ends):
                return nodes, val
            if word in ("if", "with"):
                nodes.append(cond(word, rest))
            elif word == "range":
                decl: list[str] = []
                m = re.match(r"^(\$\w*)\s*(?:,\s*(\$\w*)\s*)?:=\s*(.*)$", rest)
                if m:
                    decl = [v for v in (m.group(1), m.group(2)) if v]
                    rest = m.group(3)
                body, end = block(("else", "end"))
                els = []
                if end.startswith("else"):
                    els, _ = block(("end",))
                nodes.append(("range", decl, _pipeline(rest), body, els))
            elif word in _UNSUPPORTED:
                raise HaltError(f"strings.render_template: template action {{{{{word}}}}} is not supported by this host")
            elif word in ("end", "else"):
                raise BuiltinError(f"template: unexpected {{{{{word}}}}}")
            else:
                m = re.match(r"^(\$\w*)\s*(:=|=)\s*(.*)$", val)
                if m:
                    nodes.append(("set", m.group(1), _pipeline(m.group(3))))
                else:
                    nodes.append(("out", _pipeline(val)))
        if ends:
            raise BuiltinError("template: unexpected EOF")
        return nodes, ""

    def cond(word: str, rest: str) -> Any:
        """if/with up to and including its {{end}}; `{{else if ...}}` chains share that end."""
        body, end = block(("else", "end"))
        els: list[Any] = []
        if end.startswith("else"):
            tail = end[4:].strip()
            w2 = tail.split(None, 1)[0] if tail else ""
            if w2 in ("if", "with"):
                els = [cond(w2, tail[len(w2):].strip())]
            else:
                els, _ = block(("end",))
        return (word, _pipeline(rest), body, els)

    nodes, _ = block(())
    return nodes


def _pipeline(s: str) -> list[list[Any]]:
    toks = _lex(s)
    if not toks:
        raise BuiltinError("template: missing value for command")
    pos = 0

    def operand() -> Any:
        nonlocal pos
        kind, val = toks[pos]
        pos += 1
        if kind == "lp":
            depth, start = 1, pos
            while pos < len(toks) and depth:
                if toks[pos][0] == "lp":
                    depth += 1
                elif toks[pos][0] == "rp":
                    depth -= 1
                pos += 1
            inner = toks[start : pos - 1]
            node: Any = ("sub", _cmds(inner))
            if pos < len(toks) and toks[pos][0] == "after":
                node = ("chain", node, toks[pos][1].split(".")[1:])
                pos += 1
            return node
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
            if val in _UNSUPPORTED:
                raise HaltError(f"strings.render_template: template function {val!r} is not supported by this host")
            if val not in _FUNCS:
                raise BuiltinError(f'template: function "{val}" not defined')
            return ("fn", val)
        raise BuiltinError(f"template: unexpected {val!r}")

    def _cmds(sub: list[tuple[str, str]]) -> list[list[Any]]:
        nonlocal toks, pos
        saved = (toks, pos)
        toks, pos = sub, 0
        cmds: list[list[Any]] = [[]]
        while pos < len(toks):
            if toks[pos][0] == "pipe":
                pos += 1
                cmds.append([])
                continue
            cmds[-1].append(operand())
        toks, pos = saved
        if any(not c for c in cmds):
            raise BuiltinError("template: missing command")
        return cmds

    return _cmds(toks)


# -- execution ----------------------------------------------------------------------------------


def _field(v: Any, names: list[str]) -> Any:
    for n in names:
        if v is NOVALUE or v is None:
            return NOVALUE if v is NOVALUE else _fail_nil(n)
        if isinstance(v, dict):
            v = v.get(n, NOVALUE)
        else:
            raise BuiltinError(f"template: can't evaluate field {n} in type {_gotype(v)}")
    return v


def _fail_nil(n: str) -> Any:
    raise BuiltinError(f"template: nil pointer evaluating interface {{}}.{n}")


def _gotype(v: Any) -> str:
    if isinstance(v, JNum):
        return "json.Number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return "interface {}"


def _kind(v: Any) -> str:
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "other"


def _compare(op: str, a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka == "other":
        if op in ("eq", "ne") and (a is None or b is None):
            raise BuiltinError("template: error calling eq: invalid type for comparison")
        raise BuiltinError("template: error calling " + op + ": incompatible types for comparison")
    if ka == "bool" and op not in ("eq", "ne"):
        raise BuiltinError("template: error calling " + op + ": invalid type for comparison")
    a, b = (str(a), str(b)) if ka == "string" else (a, b)
    return {"eq": a == b, "ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def _call(name: str, args: list[Any]) -> Any:
    if name == "and":
        for a in args:
            if not _truth(a):
                return a
        return args[-1]
    if name == "or":
        for a in args:
            if _truth(a):
                return a
        return args[-1]
    if name == "not":
        if len(args) != 1:
            raise BuiltinError("template: wrong number of args for not")
        return not _truth(args[0])
    if name == "len":
        if len(args) != 1 or not isinstance(args[0], (str, list, dict)):
            raise BuiltinError(f"template: error calling len: len of type {_gotype(args[0] if args else None)}")
        return len(args[0].encode() if isinstance(args[0], str) else args[0])
    if name == "index":
        v = args[0]
        for k in args[1:]:
            if isinstance(v, dict):
                if not isinstance(k, str):
                    raise BuiltinError("template: error calling index: value has type int; should be string")
                v = v.get(k)
            elif isinstance(v, list):
                if not isinstance(k, int) or isinstance(k, bool):
                    raise BuiltinError("template: error calling index: cannot index slice/array with type " + _gotype(k))
                if not 0 <= k < len(v):
                    raise BuiltinError(f"template: error calling index: index out of range: {k}")
                v = v[k]
            else:
                raise BuiltinError(f"template: error calling index: can't index item of type {_gotype(v)}")
        return v
    if name == "print":
        return _go_sprint(args)
    if name == "println":
        return " ".join(_sprint1(a) for a in args) + "\n"
    if name == "printf":
        if not args or not isinstance(args[0], str):
            raise BuiltinError("template: printf needs a format string")
        return go_sprintf(args[0], [_fmt_arg(a) for a in args[1:]])
    if name in ("eq", "ne", "lt", "le", "gt", "ge"):
        if len(args) < 2:
            raise BuiltinError(f"template: missing argument for {name}")
        if name == "eq":
            return any(_compare("eq", args[0], b) for b in args[1:])
        return _compare(name, args[0], args[1])
    raise HaltError(f"strings.render_template: function {name!r} is not supported by this host")


def _fmt_arg(a: Any) -> Any:
    if isinstance(a, JNum):
        return _JNumArg(a)
    if isinstance(a, (list, dict)) or a is None:
        return _sprint1(a)
    return a


class _JNumArg(str):
    """json.Number as a printf operand: prints its text for %v/%s, Go's bad-verb marker otherwise."""

    go_type = "json.Number"


class _Exec:
    def __init__(self, root: Any) -> None:
        self.vars: list[dict[str, Any]] = [{"$": root}]
        self.out: list[str] = []

    def var(self, name: str) -> Any:
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise BuiltinError(f'template: undefined variable "{name}"')

    def operand(self, node: Any, dot: Any) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "field":
            return _field(dot, node[1]) if node[1] else dot
        if kind == "var":
            return _field(self.var(node[1]), node[2])
        if kind == "sub":
            return self.pipeline(node[1], dot)
        if kind == "chain":
            return _field(self.operand(node[1], dot), node[2])
        raise BuiltinError("template: unexpected operand")

    def pipeline(self, cmds: list[list[Any]], dot: Any) -> Any:
        prev: Any = _NOPREV
        for cmd in cmds:
            if cmd[0][0] == "fn":
                args = [self.operand(o, dot) for o in cmd[1:]]
                if prev is not _NOPREV:
                    args.append(prev)
                prev = _call(cmd[0][1], [None if a is NOVALUE else a for a in args])
            else:
                if len(cmd) > 1 or prev is not _NOPREV:
                    raise BuiltinError("template: can't give argument to non-function")
                prev = self.operand(cmd[0], dot)
        return prev

    def run(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                self.out.append(node[1])
            elif kind == "out":
                v = self.pipeline(node[1], dot)
                self.out.append(_sprint1(v, top=True))
            elif kind == "set":
                self.vars[-1][node[1]] = self.pipeline(node[2], dot)
            elif kind in ("if", "with"):
                v = self.pipeline(node[1], dot)
                self.vars.append({})
                if _truth(v):
                    self.run(node[2], v if kind == "with" else dot)
                else:
                    self.run(node[3], dot)
                self.vars.pop()
            elif kind == "range":
                _, decl, pipe, body, els = node
                v = self.pipeline(pipe, dot)
                if isinstance(v, list):
                    items = list(enumerate(v))
                elif isinstance(v, dict):
                    items = [(k, v[k]) for k in sorted(v)]
                elif v is None or v is NOVALUE:
                    items = []
                else:
                    raise HaltError(f"strings.render_template: range over {_gotype(v)} is not supported by this host")
                if not items:
                    self.vars.append({})
                    self.run(els, dot)
                    self.vars.pop()
                    continue
                for k, x in items:
                    scope: dict[str, Any] = {}
                    if len(decl) == 1:
                        scope[decl[0]] = x
                    elif len(decl) == 2:
                        scope[decl[0]], scope[decl[1]] = k, x
                    self.vars.append(scope)
                    self.run(body, x)
                    self.vars.pop()


_NOPREV = object()


@builtin("strings.render_template")
def render_template(ctx: EvalContext, template: Any, variables: Any) -> str:
    tpl = need_str(template, 1)
    if not isinstance(variables, dict):
        raise BuiltinError(f"operand 2 must be object but got {type_name(variables)}")
    root = _go_values(to_json(variables) if any(isinstance(x, RegoSet) for x in variables.values()) else variables)
    ex = _Exec(root)
    ex.run(_parse(tpl), root)
    return "".join(ex.out).replace("<no value>", "<undefined>")
