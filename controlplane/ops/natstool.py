"""`groqpolicy evaluate --via nats`: the CLI on NATS as the least-privileged `tool` identity, which may
request `policy.evaluate` and nothing else (README, "NATS identities")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from bridge.kernel.config import NatsSettings
from bridge.kernel.errors import ERROR_CODE_HEADER, ERROR_HEADER
from controlplane.evaluation.schemas import EVALUATE_SUBJECT
from controlplane.ops.client import ClientError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

TOOL_CONNECT_S = 3.0  # an interactive command waits this long for an unreachable NATS at most


def _tool_credential(state_dir: Path) -> NatsSettings:
    """What `evaluate --via nats` presents: the environment's NATS credential when one is set (a
    cluster someone else runs), else the local `tool` identity that `groqpolicy up` generated,
    which may request policy.evaluate and nothing else."""
    from controlplane.infra.natsauth import NatsAuth

    env = NatsSettings.from_env()
    settings = msgspec.structs.replace(env, connect_timeout_s=min(env.connect_timeout_s, TOOL_CONNECT_S))
    if env.creds_file or env.nkey_file or env.user:
        return settings
    seed = NatsAuth(state_dir / "nats" / "auth").seed_file("tool")
    return msgspec.structs.replace(settings, nkey_file=seed) if seed.exists() else settings


async def _nats_tool(nats_url: str, credential: NatsSettings) -> NatsClient:
    """A connection as the `tool` role; refused or unreachable become one line and a hint."""
    from bridge.inference.connect import NatsCredentialRefused, NatsTlsError, NatsUnreachable, connect, describe

    try:
        return await connect(nats_url, role="tool", settings=credential)
    except NatsUnreachable as exc:
        raise ClientError(f"cannot reach NATS at {nats_url}", "start the system with `make run`, or pass --nats-url") from exc
    except NatsCredentialRefused as exc:
        raise ClientError(str(exc), f"this command presented {describe(credential)}; `groqpolicy up` makes a tool "
                          "identity in <state>/nats/auth/tool.nk, or set GROQPOLICY_NATS_NKEY / _CREDS / _USER") from exc
    except NatsTlsError as exc:
        raise ClientError(str(exc), "check the GROQPOLICY_NATS_TLS_* settings") from exc


def evaluate_over_nats(nats_url: str, body: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """`policy.evaluate` request-reply as the `tool` role: the same request and response as the HTTP API."""
    import asyncio

    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout


    async def go() -> dict[str, Any]:
        nc = await _nats_tool(nats_url, _tool_credential(state_dir))
        try:
            msg = await nc.request(EVALUATE_SUBJECT, json.dumps(body).encode(), timeout=30)
        except NoRespondersError as exc:
            raise ClientError(f"{EVALUATE_SUBJECT}: no service answers on NATS", "is the control plane running?") from exc
        except NatsTimeout as exc:
            raise ClientError(f"{EVALUATE_SUBJECT}: no reply within 30 s", "check the control plane's logs") from exc
        finally:
            await nc.close()
        reply: dict[str, Any] = json.loads(msg.data)
        headers = msg.headers or {}
        if code := headers.get(ERROR_CODE_HEADER):
            message = (reply.get("error") or {}).get("message") or headers.get(ERROR_HEADER, "")
            raise ClientError(f"{EVALUATE_SUBJECT}: error {code}: {message}", "")
        return reply

    return asyncio.run(go())
