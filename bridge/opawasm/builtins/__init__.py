"""Host builtins: the Rego builtins OPA's wasm compiler leaves to the host (`opa_builtin0..4`).

Each builtin is a plain function `f(ctx, *args) -> value` registered under its Rego name.
Semantics follow OPA's topdown implementations (v1/topdown/*.go): a non-halting error
(`BuiltinError`, or any ordinary exception from bad operands) makes the call undefined, exactly
as topdown does outside strict mode; a `HaltError` fails the whole evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.opawasm.errors import BuiltinError, DeadlineExceeded, HaltError

Builtin = Callable[..., Any]
REGISTRY: dict[str, Builtin] = {}


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


def builtin(*names: str) -> Callable[[Builtin], Builtin]:
    def deco(fn: Builtin) -> Builtin:
        for n in names:
            REGISTRY[n] = fn
        return fn

    return deco


class EvalContext:
    """Per-evaluation state shared by the builtins of one evaluation (topdown's BuiltinContext):
    the evaluation's clock (time.now_ns is constant within it), deadline, host, and the cache
    that keeps http.send / rand.intn / uuid.rfc4122 consistent within one evaluation."""

    __slots__ = ("cache", "deadline", "errors", "host", "now_ns", "prints")

    def __init__(self, now_ns: int, deadline: float, host: Any) -> None:
        self.now_ns = now_ns
        self.deadline = deadline  # a time.monotonic() value
        self.host = host  # bridge.opawasm.host.HostConfig
        self.cache: dict[Any, Any] = {}
        self.prints: list[str] = []
        self.errors: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("evaluation deadline exceeded (in host builtin)")


def provided() -> frozenset[str]:
    _load_all()
    return frozenset(REGISTRY)


_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    from bridge.opawasm.builtins import (  # noqa: F401
        crypto,
        encoding,
        gotemplate,
        http,
        jwt,
        misc,
        net,
        semver,
        strings,
        timefns,
        uri,
    )

    _loaded = True


__all__ = ["REGISTRY", "UNDEFINED", "BuiltinError", "EvalContext", "HaltError", "builtin", "provided"]
