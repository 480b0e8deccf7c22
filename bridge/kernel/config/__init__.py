"""Every environment variable groqpolicy reads, in one place: a section per process.

    Settings           the control plane (HTTP API, bundle server, evaluator, audit trail)
    SupervisorSettings what `groqpolicy up` starts and on which ports
    GatewaySettings    the bridge gateway (HTTP -> NATS)
    GroqSettings       where the inference worker's model calls go (GroqCloud or the emulator)
    EngineSettings     the worker's retries, circuit breakers, caches and load limits
    SigningSettings    bundle signing and verification keys given as text or files
    ClientSettings     what the `groqpolicy` CLI presents and talks to
    ToolchainSettings  where the external binaries come from (opa, nats-server, chromium, go)

Each section is read with `Section.from_env()` (or `from_env(env)` with a mapping, which tests
use); keyword overrides win over the environment. A value that does not parse is a `ConfigError`
naming the variable. Nothing else in the product reads `os.environ`: processes that start
children take their environment from `child_environment(role)` (least privilege, see
bridge.kernel.config.children) or `environment()`. The README's configuration table lists
exactly `variables()`, and a test holds the two together.
"""

from __future__ import annotations

from bridge.kernel.config.base import (
    AUDIT_DURABILITIES,
    AUDIT_MAX_AGE_S,
    AUDIT_MAX_BYTES,
    DEFAULT_DEADLINE_MS,
    DEFAULT_NATS_URL,
    HTTP2_MODES,
    PROJECT_ROOT,
    audit_durability,
    environment,
    http2_mode,
)
from bridge.kernel.config.children import SECTIONS, child_environment
from bridge.kernel.config.control import Settings
from bridge.kernel.config.processes import (
    ClientSettings,
    EngineSettings,
    GatewaySettings,
    GroqSettings,
    NatsSettings,
    SigningSettings,
    SupervisorSettings,
    ToolchainSettings,
)
from bridge.kernel.errors import ConfigError


def variables() -> set[str]:
    """Every environment variable any section reads."""
    return {var for section in SECTIONS for var in section.ENV}


__all__ = [
    "AUDIT_DURABILITIES",
    "AUDIT_MAX_AGE_S",
    "AUDIT_MAX_BYTES",
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_NATS_URL",
    "HTTP2_MODES",
    "PROJECT_ROOT",
    "SECTIONS",
    "ClientSettings",
    "ConfigError",
    "EngineSettings",
    "GatewaySettings",
    "GroqSettings",
    "NatsSettings",
    "Settings",
    "SigningSettings",
    "SupervisorSettings",
    "ToolchainSettings",
    "audit_durability",
    "child_environment",
    "environment",
    "http2_mode",
    "variables",
]
