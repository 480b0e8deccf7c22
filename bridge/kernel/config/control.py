"""The control plane's section: HTTP API, bundle server, evaluator, audit trail, replay store."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from bridge.kernel.config.base import (
    AUDIT_MAX_AGE_S,
    AUDIT_MAX_BYTES,
    PROJECT_ROOT,
    Conv,
    _parse_audit_durability,
    _Section,
)
from bridge.kernel.errors import ConfigError
from bridge.kernel.vocabulary import MIN_MODEL_CONFIDENCE


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
    decision_log_max_age_s: float = 7 * 24 * 3600.0  # ... and its rotated files go once older than this (0: no limit)
    compile_on_start: bool = True
    bridge_url: str = "http://127.0.0.1:8016"  # where Rego's http.send reaches the bridge gateway
    bridge_token_file: Path | None = None  # the gateway's token, in every bundle; default <state_dir>/bridge-token
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
    audit_max_age_s: float = AUDIT_MAX_AGE_S  # audit stream retention by age (0: none)
    audit_max_bytes: int = AUDIT_MAX_BYTES  # ... and by size (0: none)
    # the Ed25519 key that signs audit records, checkpoints and policy records (controlplane.infra.recordkeys);
    # default <state_dir>/record-keys/signing.pem, generated on first start. Replicas share one.
    record_key_file: Path | None = None
    record_trusted_keys: Path | None = None  # a directory of further trusted public keys (retired, other replicas')
    gateway_cache_size: int = 10_000  # judgments the in-process inference client keeps for their max-age
    evaluation_threads: int = 15  # evaluations that may wait on a model (http.send) running at once
    evaluation_cpu_threads: int = 0  # evaluations too long to run inline, at once; 0: one per CPU
    evaluation_queue: int = 32  # evaluations that may wait for a thread (per kind); beyond: 503 + Retry-After
    groq_api_key_set: bool = False  # whether model calls go to GroqCloud (the dashboard says so)
    replay: str = "on"  # on | off: the replay store (controlplane.impact.store checks the value)
    replay_opt_out: str = ""  # policy types never recorded, comma-separated
    replay_max_age_h: float = 168.0
    replay_max_bytes: int = 1 << 30
    # helper processes a long replay splits its decisions with (controlplane.impact.helpers): one per CPU beyond the first
    replay_helpers: int = max(0, (os.cpu_count() or 1) - 1)
    replay_helpers_from: int = 8192  # decisions from which a replay starts them (each costs a fork and a load)
    evaljobs_max_bytes: int = 1 << 30  # the evaluation jobs' results store in JetStream (it shares the audit's)
    shadow_max_divergence: float = 0.01  # promotion above this divergence rate (0..1) needs `force`
    processes: int = 1  # the deployment's control-plane processes a batch is split across (`groqpolicy up` says)

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
        "GROQPOLICY_DECISION_LOG_MAX_AGE_S": ("decision_log_max_age_s", float),
        "GROQPOLICY_BRIDGE_URL": ("bridge_url", str),
        "GROQPOLICY_BRIDGE_TOKEN_FILE": ("bridge_token_file", Path),
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
        "GROQPOLICY_AUDIT_MAX_AGE_S": ("audit_max_age_s", float),
        "GROQPOLICY_AUDIT_MAX_BYTES": ("audit_max_bytes", int),
        "GROQPOLICY_RECORD_KEY_FILE": ("record_key_file", Path),
        "GROQPOLICY_RECORD_TRUSTED_KEYS": ("record_trusted_keys", Path),
        "GROQPOLICY_GATEWAY_CACHE_SIZE": ("gateway_cache_size", int),
        "GROQPOLICY_EVALUATION_THREADS": ("evaluation_threads", int),
        "GROQPOLICY_EVALUATION_CPU_THREADS": ("evaluation_cpu_threads", int),
        "GROQPOLICY_EVALUATION_QUEUE": ("evaluation_queue", int),
        "GROQ_API_KEY": ("groq_api_key_set", bool),
        "GROQPOLICY_REPLAY": ("replay", str), "GROQPOLICY_REPLAY_OPT_OUT": ("replay_opt_out", str),
        "GROQPOLICY_REPLAY_MAX_AGE_H": ("replay_max_age_h", float), "GROQPOLICY_REPLAY_MAX_BYTES": ("replay_max_bytes", int),
        "GROQPOLICY_REPLAY_HELPERS": ("replay_helpers", int), "GROQPOLICY_REPLAY_HELPERS_FROM": ("replay_helpers_from", int),
        "GROQPOLICY_EVALJOBS_MAX_BYTES": ("evaljobs_max_bytes", int),
        "GROQPOLICY_SHADOW_MAX_DIVERGENCE": ("shadow_max_divergence", float),
        "GROQPOLICY_PROCESSES": ("processes", int),
    }

    def _derive(self, env: Mapping[str, str]) -> None:
        if not self.opa_url:
            self.opa_url = f"http://127.0.0.1:{self.agent_port}"
        if min(self.evaluation_threads - 1, self.evaluation_cpu_threads, self.evaluation_queue) < 0:
            raise ConfigError("GROQPOLICY_EVALUATION_THREADS, _CPU_THREADS, _QUEUE: want at least 1, 0 and 0")
        if min(self.replay_helpers, self.replay_helpers_from) < 0:
            raise ConfigError("GROQPOLICY_REPLAY_HELPERS, _HELPERS_FROM: want at least 0 (0 helpers: a replay runs alone)")
        if self.processes < 1:
            self.processes = 1  # `groqpolicy up`'s 0 (one per core) means nothing to a single process

    def bundle_overlay(self, **secrets: Any) -> dict[str, Any]:
        """Deployment facts every bundle carries at data.groqpolicy.config (+ controlplane.agents.sandbox's)."""
        return {"groqpolicy": {"config": {"bridge_url": self.bridge_url,
                                          "min_allow_confidence": MIN_MODEL_CONFIDENCE, **secrets}}}

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


