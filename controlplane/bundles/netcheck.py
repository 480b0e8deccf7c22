"""Policies may call the bridge gateway and nothing else: the compile-time half of the sandbox.

OPA's `allow_net` capability restricts `http.send` only where capabilities are given at evaluation
(`opa eval`, `opa test`, the in-process evaluator's host). `opa run` takes none, and OPA's compiler
does not look at URLs at all; and `allow_net` names hosts, not ports, so on one machine it could not
tell the bridge (:8016) from the control plane (:8015) or the agent's own API (:8181) anyway. So the
compile step reads every module's AST (`opa parse --format json`) and refuses an `http.send` whose
request object names a constant `url` outside the bridge's scheme, host and port, at that string's
row and column. A URL built at evaluation time cannot be judged here; what it might reach on the
agent's host all asks for a token a policy does not hold (README, Security model).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

CODE = "rego_http_send_refused"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Violation(NamedTuple):
    message: str
    row: int
    col: int


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:  # a port that is not a number
        return None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def allowed(url: str, bridge_url: str) -> bool:
    """Whether `url` is on the bridge (same scheme, host and port)."""
    origin = _origin(url)
    return origin is not None and origin == _origin(bridge_url)


def _is_http_send(term: Any) -> bool:
    if not isinstance(term, dict) or term.get("type") != "ref":
        return False
    path = term.get("value")
    return (isinstance(path, list) and len(path) == 2
            and [p.get("value") for p in path if isinstance(p, dict)] == ["http", "send"])


def _calls(node: Any) -> Iterator[list[Any]]:
    """Every operator application in the AST whose operator is `http.send`: a call term's value,
    or an expression's terms (`http.send(req, out)`)."""
    if isinstance(node, list):
        if node and _is_http_send(node[0]):
            yield node
        for item in node:
            yield from _calls(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _calls(value)


def violations(ast_json: str, bridge_url: str) -> list[Violation]:
    """The constant `http.send` URLs of one module (`opa parse --format json --json-include
    locations` output) that are not on the bridge."""
    try:
        ast = json.loads(ast_json)
    except ValueError:
        return []  # a module opa cannot parse was already refused by `opa check`
    found = []
    for call in _calls(ast):
        request = call[1] if len(call) > 1 and isinstance(call[1], dict) else {}
        if request.get("type") != "object":
            continue
        for key, value in request.get("value", []):
            if key.get("value") != "url" or value.get("type") != "string":
                continue
            url = str(value.get("value"))
            if not allowed(url, bridge_url):
                loc = value.get("location") or {}
                found.append(Violation(f"http.send to {url!r}: a policy may call only the bridge gateway "
                                       f"({bridge_url})", int(loc.get("row", 0)), int(loc.get("col", 0))))
    return found


def restricted_capabilities(current: str, bridge_url: str) -> bytes:
    """`opa capabilities --current` with `allow_net` naming the bridge's host alone."""
    caps = json.loads(current)
    caps["allow_net"] = [urlsplit(bridge_url).hostname or ""]
    return json.dumps(caps).encode()
