"""Host builtins: the Rego builtins OPA's wasm compiler leaves to the host (`opa_builtin0..4`).

Each builtin is a plain function `f(ctx, *args) -> value` registered under its Rego name.
Semantics follow OPA's topdown implementations (v1/topdown/*.go): a non-halting error
(`BuiltinError`, or any ordinary exception from bad operands) makes the call undefined, exactly
as topdown does outside strict mode; a `HaltError` fails the whole evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from bridge.wasm.errors import BuiltinError, DeadlineExceeded, HaltError

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


@dataclass
class EvalContext:
    """Per-evaluation state shared by the builtins of one evaluation (topdown's BuiltinContext)."""

    now_ns: int
    deadline: float  # time.monotonic() value
    host: Any  # bridge.wasm.host.HostConfig
    cache: dict[Any, Any] = field(default_factory=dict)
    prints: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

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
    from bridge.wasm.builtins import (  # noqa: F401
        crypto,
        encoding,
        http,
        jwt,
        misc,
        net,
        semver,
        strings,
        timefns,
    )

    _loaded = True


__all__ = ["REGISTRY", "UNDEFINED", "EvalContext", "builtin", "provided", "BuiltinError", "HaltError"]
