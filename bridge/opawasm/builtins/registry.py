"""The builtin table and what a builtin receives: `@builtin("name")` registers `f(ctx, *args)`;
`EvalContext` is the per-evaluation state of topdown's BuiltinContext."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.opawasm.errors import DeadlineExceeded, OutOfMemory
from bridge.opawasm.host import HostConfig

# What one value costs the policy's linear memory beyond its text, at the least: the value struct
# and the allocator's header, or an array's element slot (OPA's wasm library, value.h)
NODE_BYTES = 24

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
    the evaluation's clock (time.now_ns is constant within it), deadline, memory cap, host, and
    the cache that keeps http.send / rand.intn / uuid.rfc4122 consistent within one evaluation.

    A builtin that loops over its input checks the deadline as it goes (`check_deadline`), and one
    whose result can outgrow its input checks its size before building it (`check_size`): a
    result must fit into the policy's linear memory, so one that cannot is refused while it is
    still a number, not after the host has allocated it. The deadline is checked first, so a call
    that is both late and too big always fails the same way."""

    __slots__ = ("cache", "deadline", "errors", "host", "memory_limit", "now_ns", "prints")

    def __init__(self, now_ns: int, deadline: float, host: HostConfig, memory_limit: int = 1 << 32) -> None:
        self.now_ns = now_ns
        self.deadline = deadline  # a time.monotonic() value
        self.memory_limit = memory_limit  # the policy's linear memory cap, in bytes
        self.host = host
        self.cache: dict[Any, Any] = {}
        self.prints: list[str] = []
        self.errors: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise DeadlineExceeded("evaluation deadline exceeded (in host builtin)")

    def check_size(self, nbytes: int, what: str) -> None:
        """Refuse a result that needs more than the policy's memory cap (deadline first)."""
        if nbytes > self.memory_limit:
            self.check_deadline()
            raise OutOfMemory(
                f"{what}: the result needs at least {nbytes} bytes of the policy's memory, cap is {self.memory_limit}"
            )
