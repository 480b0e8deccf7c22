"""The output variables of each query, as OPA's planner picks them for a query's result set
(internal/planner/planner.go): every var of the query, ref heads included, call operators and
closures (comprehensions, `every` bodies) excluded, minus `data`/`input` and generated (`$N`) or
wildcard vars. All queries are parsed by ONE `opa parse`, each as the body of a scratch rule."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from controlplane.infra.toolchain import OPA_VERSION

_RESERVED = {"data", "input"}


def _term_vars(t: Any, out: set[str]) -> None:
    if not isinstance(t, dict) or "type" not in t:
        return
    kind, value = t["type"], t.get("value")
    if kind == "var":
        out.add(value)
    elif kind in ("ref", "array", "set", "templatestring"):
        for x in value or []:
            _term_vars(x, out)
    elif kind == "call":
        for x in value[1:]:
            _term_vars(x, out)
    elif kind == "object":
        for k, v in value:
            _term_vars(k, out)
            _term_vars(v, out)
    # comprehensions: closures, their vars are their own


def _expr_vars(expr: dict[str, Any], out: set[str]) -> None:
    terms = expr.get("terms")
    if isinstance(terms, list):  # a call: its operator is not a var
        for t in terms[1:]:
            _term_vars(t, out)
    elif isinstance(terms, dict):
        if "symbols" in terms:  # some x / some x in xs
            for t in terms["symbols"]:
                _term_vars(t, out)
        elif "domain" in terms:  # every: only the domain is in the query's scope
            _term_vars(terms["domain"], out)
        else:
            _term_vars(terms, out)
    for w in expr.get("with") or []:
        _term_vars(w.get("value"), out)


def output_vars(body: list[dict[str, Any]]) -> list[str]:
    found: set[str] = set()
    for expr in body:
        _expr_vars(expr, found)
    return sorted(v for v in found if v not in _RESERVED and not v.startswith("$") and v != "_")


def _parse(opa: Path, text: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conformance-vars-") as td:
        f = Path(td) / "q.rego"
        f.write_text(text)
        proc = subprocess.run(
            [str(opa), "parse", "--format", "json", "--json-include", "-comments", str(f)],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip() or proc.stdout.strip())
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def query_vars(opa: Path, queries: list[str], cache_dir: Path) -> list[list[str] | str]:
    """The output vars of every query, or the parse error of a query that does not parse."""
    key = hashlib.sha256(json.dumps([OPA_VERSION, queries]).encode()).hexdigest()[:16]
    cache = cache_dir / f"queryvars-{key}.json"
    if cache.exists():
        cached: list[list[str] | str] = json.loads(cache.read_text())
        return cached
    result: list[list[str] | str] = [""] * len(queries)

    def solve(idx: list[int]) -> None:
        text = "package __conformance_vars\n" + "".join(f"q{i} if {{\n{queries[i]}\n}}\n" for i in idx)
        try:
            rules = _parse(opa, text).get("rules", [])
        except ValueError as exc:
            if len(idx) == 1:
                result[idx[0]] = f"parse error: {exc}"
                return
            solve(idx[: len(idx) // 2])  # bisect to the query that does not parse
            solve(idx[len(idx) // 2 :])
            return
        for i, rule in zip(idx, rules, strict=True):
            result[i] = output_vars(rule.get("body") or [])

    solve(list(range(len(queries))))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(cache)
    return result
