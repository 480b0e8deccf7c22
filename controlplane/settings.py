"""Configuration from the environment, with embedded defaults that run on one machine.

Every variable is listed in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from controlplane.errors import GroqPolicyError
from controlplane.toolchain import PROJECT_ROOT


class ConfigError(GroqPolicyError):
    """An environment variable that cannot be used as given."""


AUDIT_DURABILITIES = ("spool", "ack")


def audit_durability(value: str) -> str:
    if value not in AUDIT_DURABILITIES:
        raise ValueError(f"expected one of {', '.join(AUDIT_DURABILITIES)}")
    return value


class Settings(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8015
    public_url: str = ""  # how agents reach the control plane; derived from host/port when empty
    state_dir: Path = PROJECT_ROOT / ".state"
    rego_root: Path = PROJECT_ROOT  # bundle definitions' `sources` are relative to this
    bundles_dir: Path = PROJECT_ROOT / "bundles"
    signing_key_file: Path | None = None  # default: <state_dir>/keys/<kid>.pem, generated on first start
    signing_kid: str = "groqpolicy"
    signing_alg: str = "RS256"
    long_poll_max_s: int = 300  # upper bound for an agent's `Prefer: wait=N`
    max_log_body_bytes: int = 64 * 1024 * 1024  # decompressed decision-log batch limit
    compile_on_start: bool = True
    bridge_url: str = "http://127.0.0.1:8016"  # where Rego's http.send reaches the bridge gateway
    tokens: str = ""  # bearer tokens `[name=]token:scope+scope,...`; none configured: generated in <state_dir>/tokens
    tokens_file: Path | None = None  # the same entries, one per line
    rate_limit: str = "2000/second"  # per client (bearer token, else address): <n>/<second|minute|hour|day> or off
    nats_url: str = ""  # empty: start an embedded nats-server on <state_dir>/nats
    nats_replicas: int = 1  # JetStream replicas of the policy KV bucket and object store
    opa_url: str = "http://127.0.0.1:8181"  # the OPA agent `/api/v1/opa/evaluate` asks when use_wasm is false
    # when a decision may be answered: `spool` once its audit record is in the local write-ahead spool
    # (JetStream append in the background), `ack` once JetStream acknowledged it (see controlplane.audit.spool)
    audit_durability: str = "spool"
    audit_max_backlog: int = 100_000  # spooled records waiting for JetStream before evaluations get 503

    def bundle_overlay(self) -> dict:
        """Deployment facts every bundle carries at data.groqpolicy.config."""
        return {"groqpolicy": {"config": {"bridge_url": self.bridge_url}}}

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        mapping = {
            "GROQPOLICY_HOST": ("host", str),
            "GROQPOLICY_PORT": ("port", int),
            "GROQPOLICY_PUBLIC_URL": ("public_url", str),
            "GROQPOLICY_STATE_DIR": ("state_dir", Path),
            "GROQPOLICY_REGO_ROOT": ("rego_root", Path),
            "GROQPOLICY_BUNDLES_DIR": ("bundles_dir", Path),
            "GROQPOLICY_SIGNING_KEY_FILE": ("signing_key_file", Path),
            "GROQPOLICY_SIGNING_KID": ("signing_kid", str),
            "GROQPOLICY_SIGNING_ALG": ("signing_alg", str),
            "GROQPOLICY_LONG_POLL_MAX_S": ("long_poll_max_s", int),
            "GROQPOLICY_BRIDGE_URL": ("bridge_url", str),
            "GROQPOLICY_TOKENS": ("tokens", str),
            "GROQPOLICY_TOKENS_FILE": ("tokens_file", Path),
            "GROQPOLICY_RATE_LIMIT": ("rate_limit", str),
            "NATS_URL": ("nats_url", str),
            "GROQPOLICY_NATS_URL": ("nats_url", str),  # after NATS_URL: the specific name wins
            "GROQPOLICY_NATS_REPLICAS": ("nats_replicas", int),
            "GROQPOLICY_OPA_URL": ("opa_url", str),
            "GROQPOLICY_AUDIT_DURABILITY": ("audit_durability", audit_durability),
            "GROQPOLICY_AUDIT_MAX_BACKLOG": ("audit_max_backlog", int),
        }
        for var, (field, conv) in mapping.items():
            if var in env and env[var] != "":
                try:
                    values[field] = conv(env[var])
                except ValueError as exc:
                    raise ConfigError(f"{var}={env[var]!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
