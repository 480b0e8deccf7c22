"""The builtin table and what a builtin receives: `@builtin("name")` registers `f(ctx, *args)`;
`EvalContext` is the per-evaluation state of topdown's BuiltinContext."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.opawasm.errors import DeadlineExceeded
from bridge.opawasm.host import HostConfig

Builtin = Callable[..., Any]
REGISTRY: dict[str, Builtin] = {}


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

    def __init__(self, now_ns: int, deadline: float, host: HostConfig) -> None:
        self.now_ns = now_ns
        self.deadline = deadline  # a time.monotonic() value
        self.host = host
        self.cache: dict[Any, Any] = {}
        self.prints: list[str] = []
        self.errors: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("evaluation deadline exceeded (in host builtin)")
