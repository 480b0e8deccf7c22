"""The sections of the other processes: supervisor, gateway, worker (Groq, engine), signing keys,
the CLI, the toolchain, and the NATS credential every process presents."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bridge.kernel.config.base import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_NATS_URL,
    PROJECT_ROOT,
    Conv,
    _Section,
    http2_mode,
)
from bridge.kernel.errors import ConfigError


class SupervisorSettings(_Section, kw_only=True):
    """What `groqpolicy up` starts beside the control plane, and where."""

    nats_port: int = 4222
    gateway_port: int = 8016
    agent_port: int = 8181
    workers: int = 2  # inference workers in one queue group: one can die without a gap
    # control-plane processes serving one listening socket, each a replica (0: one per core)
    processes: int = 0

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_NATS_PORT": ("nats_port", int),
        "GROQPOLICY_GATEWAY_PORT": ("gateway_port", int),
        "GROQPOLICY_AGENT_PORT": ("agent_port", int),
        "GROQPOLICY_WORKERS": ("workers", int),
        "GROQPOLICY_PROCESSES": ("processes", int),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        if self.workers < 1:
            raise ConfigError(f"GROQPOLICY_WORKERS={self.workers}: want at least 1")
        if self.processes < 0:
            raise ConfigError(f"GROQPOLICY_PROCESSES={self.processes}: want at least 1 (0: one per core)")
        if self.processes == 0:
            self.processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class GatewaySettings(_Section, kw_only=True):
    """The bridge gateway: HTTP `POST /v1/infer/{tier}` -> NATS `groq.infer.<tier>`."""

    host: str = "127.0.0.1"
    port: int = 8016
    nats_url: str = DEFAULT_NATS_URL
    deadline_ms: int = DEFAULT_DEADLINE_MS
    cache_size: int = 10_000  # judgments kept for their max-age; 0 disables
    token_file: Path | None = None  # the bridge token callers must present (the control plane's file)
    token: str = ""  # the same token as text, for callers that hold it in memory (no variable: env leaks)

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQPOLICY_BRIDGE_TOKEN_FILE": ("token_file", Path),
        "GROQPOLICY_GATEWAY_HOST": ("host", str),
        "GROQPOLICY_GATEWAY_PORT": ("port", int),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),
        "GROQPOLICY_GATEWAY_DEADLINE_MS": ("deadline_ms", int),
        "GROQPOLICY_GATEWAY_CACHE_SIZE": ("cache_size", int),
    }

    def __repr__(self) -> str:  # the token never reaches a log line
        return f"GatewaySettings(host={self.host!r}, port={self.port}, token={'***' if self.token else ''!r})"


class GroqSettings(_Section, kw_only=True):
    """Where the inference worker's model calls go: GroqCloud with a key, else an emulator."""

    api_key: str = ""
    base_url: str = "https://api.groq.com"  # GroqCloud's host; the SDK adds /openai/v1
    emulator_url: str = ""  # an emulator running elsewhere (`python -m bridge.emulator`)
    nats_url: str = DEFAULT_NATS_URL
    tier_catalog: Path | None = None  # default: bridge/inference/catalog/tiers.json
    batch_completion_window: str = "24h"  # Batch API jobs (impact via=batch): GroqCloud takes 24h to 7d
    batch_poll_s: float = 1.0  # the first wait between a batch's status checks (doubled up to 30 s)

    ENV: ClassVar[dict[str, tuple[str, Conv]]] = {
        "GROQ_API_KEY": ("api_key", str),
        "GROQ_BASE_URL": ("base_url", str),
        "GROQPOLICY_EMULATOR_URL": ("emulator_url", str),
        "NATS_URL": ("nats_url", str),
        "GROQPOLICY_NATS_URL": ("nats_url", str),
        "GROQPOLICY_TIER_CATALOG": ("tier_catalog", Path),
        "GROQPOLICY_BATCH_COMPLETION_WINDOW": ("batch_completion_window", str),
        "GROQPOLICY_BATCH_POLL_S": ("batch_poll_s", float),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        if self.batch_poll_s <= 0:
            raise ConfigError(f"GROQPOLICY_BATCH_POLL_S={self.batch_poll_s}: must be above 0")

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


