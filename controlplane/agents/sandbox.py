"""What every bundle carries so that OPA agents run sandboxed, at data.groqpolicy.config:

- `agent_api`: the SHA-256 digests of the tokens an agent's own REST API admits, by scope
  (`admin`, `evaluate`); `rego/system/authz.rego` checks them when the agent runs with
  `--authentication=token --authorization=basic`. Digests, not tokens: every policy can read data.
- `bridge_token`: the token the bridge gateway requires; `rego/lib/groq.rego` presents it. A policy
  may hold it (asking the bridge is what policies may do); decision logs never keep it
  (`redact_bridge_token`).

Both count toward the bundle revision: rotating a token publishes a new revision, which agents
receive by long polling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.kernel.config import Settings
from controlplane.auth.tokens import TokenSet, ensure_secret

AGENT_API_SCOPES = ("admin", "evaluate")
REDACTED = b"[redacted bridge token]"


def bridge_token_path(settings: Settings) -> Path:
    """`GROQPOLICY_BRIDGE_TOKEN_FILE`, default `<state>/bridge-token`."""
    return settings.bridge_token_file or settings.state_dir / "bridge-token"


def bridge_token(settings: Settings) -> str:
    """The gateway's token, generated (0600) on first use."""
    return ensure_secret(bridge_token_path(settings))


def sandbox_overlay(settings: Settings, tokens: TokenSet | None, token: str) -> dict[str, Any]:
    """The deployment overlay of every bundle (`Settings.bundle_overlay`) with the agent API's
    token digests and the bridge token."""
    api = {scope: tokens.digests(scope) if tokens is not None else [] for scope in AGENT_API_SCOPES}
    return settings.bundle_overlay(agent_api=api, bridge_token=token)


def redact_bridge_token(raw: bytes, token: str) -> bytes:
    """A decision-log batch without the bridge token: OPA logs each `http.send` request whole
    (`nd_builtin_cache`), headers included. The token is URL-safe base64, so it appears verbatim."""
    return raw.replace(token.encode(), REDACTED) if token else raw
