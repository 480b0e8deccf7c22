"""The machinery of the configuration: a section's variables parsed from the environment (the one
place the product reads `os.environ`), converters, and the defaults several sections share."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec

from bridge.kernel.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DEADLINE_MS = 5_000  # a model call's deadline when its request names none (gateway, worker, client)
AUDIT_DURABILITIES = ("spool", "ack")
# audit stream retention (oldest first; 0 = none): 1 GiB ~ 1.5 M evaluations (benchmarks/README.md). Every
# process opening the stream starts from these, so only a deliberate setting differs from the bootstrap's.
AUDIT_MAX_AGE_S = 30 * 86400.0
AUDIT_MAX_BYTES = 1 << 30

_S = TypeVar("_S", bound="_Section")
Conv = Callable[[str], Any]


HTTP2_MODES = ("auto", "prior-knowledge", "off")


def http2_mode(value: str) -> str:
    if value not in HTTP2_MODES:
        raise ValueError(f"expected one of {', '.join(HTTP2_MODES)}")
    return value


def audit_durability(value: str) -> str:
    if value not in AUDIT_DURABILITIES:
        raise ValueError(f"expected one of {', '.join(AUDIT_DURABILITIES)}")
    return value


# `Settings` has a field named `audit_durability`: inside its class body that name is the field's
# default (a str), not this function, so the variable table refers to the function by this name.
_parse_audit_durability = audit_durability


def environment() -> dict[str, str]:
    """A copy of this process's environment, for the children it starts."""
    return dict(os.environ)


class _Section(msgspec.Struct, kw_only=True):
    """A section: its fields, and `ENV` mapping each variable to (field, converter). When two
    variables set one field, the later one in `ENV` wins."""

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {}

    @classmethod
    def from_env(cls: type[_S], env: Mapping[str, str] | None = None, /, **overrides: Any) -> _S:
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, (field, conv) in cls.ENV.items():
            raw = source.get(var, "")
            if raw != "":
                try:
                    values[field] = conv(raw)
                except ValueError as exc:
                    raise ConfigError(f"{var}={raw!r}: {exc}") from exc
        values.update(overrides)
        section = cls(**values)
        section._derive(source)
        return section

    def _derive(self, env: Mapping[str, str]) -> None:
        """Defaults that depend on other values (derived after loading)."""


