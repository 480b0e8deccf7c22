"""A ready-to-run OPA agent configuration pointing at this control plane.

Everything an agent needs in one file: the service, the bundle with `signing.keyid` (without it
OPA would accept unsigned bundles), the verification key, decision logs with the
non-deterministic builtin cache (so `http.send` results are logged), status, and long polling.
"""

from __future__ import annotations

import msgspec
import yaml

SERVICE = "groqpolicy"


class AgentConfigOptions(msgspec.Struct, kw_only=True):
    bundle: str = "groqpolicy"
    agent_id: str = ""
    long_polling_timeout_s: int = 60
    min_delay_s: int = 10
    max_delay_s: int = 20
    log_min_delay_s: int = 1
    log_max_delay_s: int = 5
    token: str = ""  # bearer token the agent presents (scope `agent`)
    scope: str = ""  # signature scope the agent insists on


def render_agent_config(
    *, base_url: str, kid: str, algorithm: str, public_key_pem: str, options: AgentConfigOptions
) -> dict:
    service: dict = {"url": base_url.rstrip("/")}
    if options.token:
        service["credentials"] = {"bearer": {"token": options.token}}
    signing: dict = {"keyid": kid}
    if options.scope:
        signing["scope"] = options.scope
    config: dict = {
        "services": {SERVICE: service},
        "labels": {"app": "groqpolicy"},
        "bundles": {
            options.bundle: {
                "service": SERVICE,
                "resource": f"bundles/{options.bundle}",
                # an agent restarted while the control plane is down keeps enforcing the last
                # revision it activated (OPA keeps it in `persistence_directory`, default ./.opa)
                "persist": True,
                "polling": {
                    "min_delay_seconds": options.min_delay_s,
                    "max_delay_seconds": options.max_delay_s,
                    "long_polling_timeout_seconds": options.long_polling_timeout_s,
                },
                "signing": signing,
            }
        },
        "keys": {kid: {"algorithm": algorithm, "key": public_key_pem}},
        "decision_logs": {
            "service": SERVICE,
            "reporting": {"min_delay_seconds": options.log_min_delay_s, "max_delay_seconds": options.log_max_delay_s},
        },
        "status": {"service": SERVICE},
        "nd_builtin_cache": True,
    }
    if options.agent_id:
        # OPA overwrites `labels.id` with its own instance id, so the name travels as `labels.agent`
        config["labels"]["agent"] = options.agent_id
    return config


def to_yaml(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
