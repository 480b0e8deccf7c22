"""How a policy revision is loaded and run: one `LoadOptions` for every loader.

`load_bundle`, `policy_from_files`, `WasmPolicy` and `WasmEvaluator` all take one, plus its fields
as keywords for a call that changes a few (`WasmEvaluator(keys, pool_size=16)`): the struct is
OPA's chain of `With...` options, written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.opawasm.host import HostConfig

DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
DEFAULT_TIMEOUT = 1.0
_PAGE = 65536


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadOptions:
    keyid: str | None = None
    """Verify with this key id whatever the signature names (an OPA agent's `signing.keyid`)."""
    scope: str | None = None
    """The scope the bundle must be signed for; None: the bundle must carry none."""
    host: HostConfig | None = None
    """What the host lends the policy (http.send transports, runtime info, print sink)."""
    pool_size: int | None = None
    """Instances, i.e. evaluations that can run at once; None: twice the CPUs, at least 2."""
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    """Linear memory per instance, in bytes (wasm32 caps it at 4 GiB)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds an evaluation may take unless its call says otherwise."""
    strict_builtin_errors: bool = False
    """Like `opa eval --strict-builtin-errors`: a builtin error fails the evaluation."""
    custom_builtins: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    """Host builtins of the caller's own (OPA's `rego.Function`), `f(ctx, *args) -> value`, by the
    name the policy was compiled against (declared to `opa build` through its capabilities)."""
    share_data: bool = True
    """Parse `data` once per revision and map it into every pooled instance (copy-on-write), instead
    of parsing it into each one; off, or where the host cannot (`memimage.supported`), each parses."""
    module_cache: Path | None = None
    """A directory that keeps compiled modules for later processes (trusted: they are native code)."""
    native_hostcalls: bool = True
    """Let the native fast path (`hostfast`, when built) answer the `glob.match` calls it can;
    False: every call through the Python builtin (same answers)."""
    fuel_free_lane: bool = False
    """Evaluate what is not inline on instances of an engine without fuel (`lanes.py`), once their
    module is compiled (started by the first such evaluation, in the background); never for a
    policy that can call `http.send`."""

    def __post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"pool_size: want at least 1 instance (or None for the default), got {self.pool_size}")
        if self.memory_limit < _PAGE:
            raise ValueError(f"memory_limit: want at least one wasm page ({_PAGE} bytes), got {self.memory_limit}")
        if not self.timeout > 0:
            raise ValueError(f"timeout: want a positive number of seconds, got {self.timeout}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(LoadOptions))
_DEFAULT = LoadOptions()


def load_options(options: LoadOptions | None, overrides: Mapping[str, Any]) -> LoadOptions:
    """`options` (default: `LoadOptions()`) with the fields named in `overrides` replaced."""
    base = _DEFAULT if options is None else options
    if not overrides:
        return base
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(f"unknown load option(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
    return dataclasses.replace(base, **overrides)
