"""What each child of `groqpolicy up` inherits from the supervisor's environment: least privilege.

A child's environment is readable by anything running as it (and by every policy on an OPA agent,
`opa.runtime().env`), so a secret belongs only in the processes that use it. The rule has two parts:

- The product's own secrets (`SECRET_HOLDERS`) go only to the roles that read them: `GROQ_API_KEY`
  to the inference workers (every online model call) and the control plane (the Batch API jobs of
  `impact --via batch`, submitted from there), never the gateway; the API's tokens and the
  signing and record keys to the control plane, the bridge token to the gateway and the control
  plane, the CLI's own token to no one. Every other product variable (ports, URLs, limits) is
  harmless and passes.
- A variable the product does not read passes unless its name says it is a credential
  (`FOREIGN_SECRET`: AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN, SSH_AUTH_SOCK, another vendor's API key):
  no child uses one, and a deny list by name keeps what a Python process or a proxy needs (PATH,
  HOME, locale, VIRTUAL_ENV, HTTPS_PROXY, SSL_CERT_FILE) without naming each of them.

The OPA agent is stricter: an allow list of PATH alone, as every policy it runs can read the rest;
so is `nats-server`, which reads none of our variables but expands `$VAR` in its config.
NATS credentials are the supervisor's business (controlplane.ops.system): with the embedded server
each NATS role gets its own seed in place of whatever the shell held.
"""

from __future__ import annotations

import re

from bridge.kernel.config.base import _Section, environment
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

SECTIONS: tuple[type[_Section], ...] = (Settings, SupervisorSettings, GatewaySettings, GroqSettings, EngineSettings, SigningSettings, ClientSettings,
            ToolchainSettings, NatsSettings)

CONTROLPLANE, WORKER, GATEWAY, EMULATOR = "controlplane", "worker", "gateway", "emulator"
AGENT, NATS_SERVER = "agent", "nats-server"  # binaries that use no variable of ours: an allow list
ROLES = (CONTROLPLANE, WORKER, GATEWAY, EMULATOR, AGENT, NATS_SERVER)
NATS_ROLES = frozenset({CONTROLPLANE, WORKER, GATEWAY})

# every secret the product reads -> the roles that use it (no one else is given it)
SECRET_HOLDERS: dict[str, frozenset[str]] = {
    "GROQ_API_KEY": frozenset({WORKER, CONTROLPLANE}),  # the control plane: Batch API jobs (impact)
    "GROQPOLICY_TOKENS": frozenset({CONTROLPLANE}),
    "GROQPOLICY_TOKENS_FILE": frozenset({CONTROLPLANE}),
    "GROQPOLICY_SIGNING_KEY": frozenset({CONTROLPLANE}),
    "GROQPOLICY_SIGNING_KEY_FILE": frozenset({CONTROLPLANE}),
    "GROQPOLICY_RECORD_KEY_FILE": frozenset({CONTROLPLANE}),
    "GROQPOLICY_BRIDGE_TOKEN_FILE": frozenset({CONTROLPLANE, GATEWAY}),
    "GROQPOLICY_TOKEN": frozenset(),  # the CLI's token: a child of `up` never acts as the CLI
    **{var: NATS_ROLES for var in NatsSettings.ENV if var != "GROQPOLICY_NATS_CONNECT_TIMEOUT_S"},
}
# a name that says "credential"; matched as a whole word of the name (between underscores)
FOREIGN_SECRET = re.compile(r"(^|_)(APIKEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE)S?(_|$)",
                            re.IGNORECASE)
AGENT_KEEP = ("PATH",)


def child_environment(role: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a child of `role` starts with: ours (or `env`), less what it must not hold."""
    if role not in ROLES:
        raise ValueError(f"unknown child role {role!r}; expected one of {', '.join(ROLES)}")
    source = environment() if env is None else env
    if role in (AGENT, NATS_SERVER):
        return {k: source[k] for k in AGENT_KEEP if k in source}
    product = {var for section in SECTIONS for var in section.ENV}
    kept = {}
    for name, value in source.items():
        if name in SECRET_HOLDERS:
            if role in SECRET_HOLDERS[name]:
                kept[name] = value
        elif name in product or not FOREIGN_SECRET.search(name):
            kept[name] = value
    return kept
