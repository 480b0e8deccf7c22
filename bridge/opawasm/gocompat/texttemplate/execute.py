"""text/template's execution: walks the parsed nodes with a dot value and variable scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.opawasm.gocompat.errors import GoError, Unsupported
from bridge.opawasm.gocompat.texttemplate.funcs import call
from bridge.opawasm.gocompat.texttemplate.values import NOVALUE, gotype, sprint1, truth

_NOPREV = object()  # a pipeline's first command has no previous result to take as its last argument


Progress = Callable[[int], None]


def execute(nodes: list[Any], data: Any, progress: Progress | None = None) -> str:
    """The output of the parsed template `nodes` with `data` as dot and `$`. `progress(size)` is
    called as the output grows (every few hundred pieces): a caller's hook to stop a template
    whose ranges multiply past its time or memory."""
    ex = _Exec(data, progress)
    ex.run(nodes, data)
    return "".join(ex.out)

def _field(v: Any, names: list[str]) -> Any:
    for n in names:
        if v is NOVALUE or v is None:
            return NOVALUE if v is NOVALUE else _fail_nil(n)
        if isinstance(v, dict):
            v = v.get(n, NOVALUE)
        else:
            raise GoError(f"template: can't evaluate field {n} in type {gotype(v)}")
    return v


def _fail_nil(n: str) -> Any:
    raise GoError(f"template: nil pointer evaluating interface {{}}.{n}")


class _Exec:
    def __init__(self, root: Any, progress: Progress | None = None) -> None:
        self.vars: list[dict[str, Any]] = [{"$": root}]
        self.out: list[str] = []
        self.size = 0  # the length of out[: self.counted]
        self.counted = 0
        self.progress = progress

    def report(self) -> None:
        """Tell the progress hook the output's size (called every 256 range iterations)."""
        if self.progress is not None:
            self.size += sum(len(piece) for piece in self.out[self.counted :])
            self.counted = len(self.out)
            self.progress(self.size)

    def var(self, name: str) -> Any:
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise GoError(f'template: undefined variable "{name}"')

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
        raise GoError("template: unexpected operand")

    def pipeline(self, cmds: list[list[Any]], dot: Any) -> Any:
        prev: Any = _NOPREV
        for cmd in cmds:
            if cmd[0][0] == "fn":
                args = [self.operand(o, dot) for o in cmd[1:]]
                if prev is not _NOPREV:
                    args.append(prev)
                prev = call(cmd[0][1], [None if a is NOVALUE else a for a in args])
            else:
                if len(cmd) > 1 or prev is not _NOPREV:
                    raise GoError("template: can't give argument to non-function")
                prev = self.operand(cmd[0], dot)
        return prev

    def run(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                self.out.append(node[1])
            elif kind == "out":
                v = self.pipeline(node[1], dot)
                self.out.append(sprint1(v, top=True))
            elif kind == "set":
                self.vars[-1][node[1]] = self.pipeline(node[2], dot)
            elif kind in ("if", "with"):
                v = self.pipeline(node[1], dot)
                self.vars.append({})
                if truth(v):
                    self.run(node[2], v if kind == "with" else dot)
                else:
                    self.run(node[3], dot)
                self.vars.pop()
            elif kind == "range":
                self.range(node, dot)

    def range(self, node: Any, dot: Any) -> None:
        _, decl, pipe, body, els = node
        v = self.pipeline(pipe, dot)
        if isinstance(v, list):
            items = list(enumerate(v))
        elif isinstance(v, dict):
            items = [(k, v[k]) for k in sorted(v)]
        elif v is None or v is NOVALUE:
            items = []
        else:
            raise Unsupported(f"range over {gotype(v)} is not supported by this host")
        if not items:
            self.vars.append({})
            self.run(els, dot)
            self.vars.pop()
            return
        for i, (k, x) in enumerate(items):
            scope: dict[str, Any] = {}
            if len(decl) == 1:
                scope[decl[0]] = x
            elif len(decl) == 2:
                scope[decl[0]], scope[decl[1]] = k, x
            self.vars.append(scope)
            self.run(body, x)
            self.vars.pop()
            if i & 0xFF == 0xFF:
                self.report()  # ranges multiply: only they can make the output outgrow the input
