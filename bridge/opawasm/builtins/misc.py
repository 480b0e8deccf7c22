"""Object, rand, graph, numbers and runtime builtins (topdown subset.go, numbers.go,
graphs.go, runtime.go)."""

from __future__ import annotations

import random
from typing import Any

from bridge.opawasm.builtins.operands import need_int, need_str, type_name
from bridge.opawasm.builtins.registry import NODE_BYTES, EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import RegoSet, canonical_key, to_json


def _eq(a: Any, b: Any) -> bool:
    return canonical_key(a) == canonical_key(b)


def _obj_subset(sup: dict, sub: dict) -> bool:
    for k, sv in sub.items():
        if k not in sup:
            return False
        pv = sup[k]
        if _eq(pv, sv):
            continue
        if isinstance(pv, dict) and isinstance(sv, dict):
            if not _obj_subset(pv, sv):
                return False
        elif isinstance(pv, RegoSet) and isinstance(sv, RegoSet):
            if not _set_subset(pv, sv):
                return False
        elif isinstance(pv, list) and isinstance(sv, list):
            if not _arr_subset(pv, sv):
                return False
        else:
            return False
    return True


def _set_subset(sup: RegoSet, sub: RegoSet) -> bool:
    keys = {canonical_key(x) for x in sup.items}
    return all(canonical_key(x) in keys for x in sub.items)


def _arr_subset(sup: list, sub: list) -> bool:
    if len(sub) > len(sup):
        return False
    ks, kb = [canonical_key(x) for x in sup], [canonical_key(x) for x in sub]
    if ks == kb:
        return True
    sc = bc = 0
    while True:
        if bc == len(kb):
            return True
        if sc + bc == len(ks):
            return False
        if ks[sc + bc] == kb[bc]:
            bc += 1
        else:
            sc += 1
            bc = 0


@builtin("object.subset")
def object_subset(ctx: EvalContext, sup: Any, sub: Any) -> bool:
    if isinstance(sup, dict) and isinstance(sub, dict):
        return _obj_subset(sup, sub)
    if isinstance(sup, RegoSet) and isinstance(sub, RegoSet):
        return _set_subset(sup, sub)
    if isinstance(sup, list) and isinstance(sub, list):
        return _arr_subset(sup, sub)
    if isinstance(sup, list) and isinstance(sub, RegoSet):
        want = {canonical_key(x) for x in sub.items}
        if not want:
            return False  # Until() never sees unmatched reach 0 for an empty set
        for x in sup:
            want.discard(canonical_key(x))
            if not want:
                return True
        return False
    raise BuiltinError("both arguments object.subset must be of the same type or array and set")


# -- rand ------------------------------------------------------------------------------------


@builtin("rand.intn")
def rand_intn(ctx: EvalContext, s: Any, n: Any) -> int:
    s, n = need_str(s, 1), need_int(n, 2)
    if n == 0:
        return 0
    n = abs(n)
    key = ("rand", f"{s}-{n}")
    if key not in ctx.cache:
        ctx.cache[key] = random.SystemRandom().randrange(n)
    return ctx.cache[key]


# -- numbers / graph -----------------------------------------------------------------------------


@builtin("numbers.range_step")
def range_step(ctx: EvalContext, a: Any, b: Any, step: Any) -> list[int]:
    a, b, step = need_int(a, 1), need_int(b, 2), need_int(step, 3)
    if step <= 0:
        raise BuiltinError("numbers.range_step: step must be a positive integer")
    count = abs(b - a) // step + 1
    stride = step if a <= b else -step
    if count <= 1 << 12:  # small enough to build at once: no accounting to do
        return list(range(a, a + count * stride, stride))
    digits = max(len(str(a)), len(str(b)))  # each element's text, at most
    ctx.check_size(count * (NODE_BYTES + digits + 1), "numbers.range_step")
    out: list[int] = []
    for start in range(0, count, 1 << 16):
        ctx.check_deadline()
        out.extend(range(a + start * stride, a + min(count, start + (1 << 16)) * stride, stride))
    return out


@builtin("graph.reachable_paths")
def reachable_paths(ctx: EvalContext, graph: Any, initial: Any) -> RegoSet:
    if not isinstance(graph, dict):
        raise BuiltinError(f"operand 1 must be object but got {type_name(graph)}")
    if not isinstance(initial, (list, RegoSet)):
        raise BuiltinError(f"operand 2 must be one of {{array, set}} but got {type_name(initial)}")
    paths: list[list[Any]] = []

    def edges(node: Any) -> list[Any]:
        e = graph.get(node) if isinstance(node, str) else None
        if e is None:
            return []
        return list(e) if isinstance(e, (list, RegoSet)) else []

    def walk(node: Any, path: list[Any]) -> None:
        ctx.check_deadline()  # the paths of a dense graph are exponentially many
        nxt = [x for x in edges(node) if canonical_key(x) not in {canonical_key(p) for p in path}]
        if not isinstance(node, str) or node not in graph:
            if path[:-1]:
                paths.append(path[:-1])
            return
        if not nxt:
            paths.append(path)
            return
        for x in nxt:
            walk(x, [*path, x])

    for start in initial:
        if isinstance(start, str) and start in graph:
            walk(start, [start])
    return RegoSet(paths)


@builtin("opa.runtime")
def opa_runtime(ctx: EvalContext) -> Any:
    rt = dict(ctx.host.runtime or {})
    if "config" in rt and isinstance(rt["config"], dict):
        cfg = dict(rt["config"])
        for k in ("services", "keys", "credentials"):
            cfg.pop(k, None)
        rt["config"] = cfg
    return to_json(rt)

