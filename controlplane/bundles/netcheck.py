"""Policies may call the bridge gateway and nothing else: the compile-time half of the sandbox.

OPA's `allow_net` capability restricts `http.send` only where capabilities are given at evaluation
(`opa eval`, `opa test`, the in-process evaluator's host). `opa run` takes none, and OPA's compiler
does not look at URLs at all; and `allow_net` names hosts, not ports, so on one machine it could not
tell the bridge (:8016) from the control plane (:8015) or the agent's own API (:8181) anyway. So the
compile step reads the AST (`opa parse --format json`) of every module that calls `http.send` and
refuses a constant `url` outside the bridge's scheme, host and port, at that string's row and
column: in the request object of a call, and in any object literal shaped like a request (`method`
and `url`), which catches a request built in one place and sent in another. A URL built at evaluation time cannot be judged here; what it might reach on the
agent's host all asks for a token a policy does not hold (README, Security model).
"""

from __future__ import annotations

import hashlib
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


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every object literal in the AST."""
    if isinstance(node, list):
        for item in node:
            yield from _objects(item)
    elif isinstance(node, dict):
        if node.get("type") == "object" and isinstance(node.get("value"), list):
            yield node
        for value in node.values():
            yield from _objects(value)


def _constant_url(request: dict[str, Any]) -> dict[str, Any] | None:
    """The `url` term of a request object when it is a constant string."""
    for pair in request.get("value", []):
        if isinstance(pair, list) and len(pair) == 2 and pair[0].get("value") == "url" and pair[1].get("type") == "string":
            return dict(pair[1])
    return None


def _keys(obj: dict[str, Any]) -> set[object]:
    return {pair[0].get("value") for pair in obj.get("value", []) if isinstance(pair, list) and len(pair) == 2}


def violations(ast_json: str, bridge_url: str) -> list[Violation]:
    """The constant `http.send` URLs of one module (`opa parse --format json --json-include
    locations` output) that are not on the bridge."""
    try:
        ast = json.loads(ast_json)
    except ValueError:
        return []  # a module opa cannot parse was already refused by `opa check`
    return violations_in(ast, bridge_url)


def violations_in(ast: Any, bridge_url: str) -> list[Violation]:
    """`violations` of a module's AST already decoded."""
    requests = [call[1] for call in _calls(ast) if len(call) > 1 and isinstance(call[1], dict)
                and call[1].get("type") == "object"]
    requests += [obj for obj in _objects(ast) if {"method", "url"} <= _keys(obj)]
    found: dict[tuple[int, int], Violation] = {}
    for request in requests:
        term = _constant_url(request)
        if term is None or allowed(str(term.get("value")), bridge_url):
            continue
        loc = term.get("location") or {}
        at = (int(loc.get("row", 0)), int(loc.get("col", 0)))
        found[at] = Violation(f"http.send to {term.get('value')!r}: a policy may call only the bridge gateway "
                              f"({bridge_url})", *at)
    return [found[at] for at in sorted(found)]


class Findings:
    """`violations` per module text, kept by the text's digest: a write parses only the modules it
    changed (the library's and the other stored policies' are the same bytes as at the last write),
    and the user's module, parsed once for its names, is never parsed again for its URLs."""

    LIMIT = 4096  # texts kept; forgotten all at once past it (each entry is a few short tuples)

    def __init__(self, bridge_url: str) -> None:
        self.bridge_url = bridge_url
        self._known: dict[bytes, list[Violation]] = {}

    def get(self, text: bytes) -> list[Violation] | None:
        return self._known.get(hashlib.sha256(text).digest())

    def put(self, text: bytes, found: list[Violation]) -> list[Violation]:
        if len(self._known) >= self.LIMIT:
            self._known.clear()
        self._known[hashlib.sha256(text).digest()] = found
        return found

    def remember(self, text: bytes, ast: Any) -> None:
        """The findings of `text` from its AST (`opa parse` of it, or of a text with the same rows
        and columns wherever a URL can be: the user's text beside the module it becomes)."""
        self.put(text, violations_in(ast, self.bridge_url))


def restricted_capabilities(current: str, bridge_url: str) -> bytes:
    """`opa capabilities --current` with `allow_net` naming the bridge's host alone."""
    caps = json.loads(current)
    caps["allow_net"] = [urlsplit(bridge_url).hostname or ""]
    return json.dumps(caps).encode()
