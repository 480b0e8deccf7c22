"""Least privilege for the environments of `groqpolicy up`'s children: only the inference workers
hold `GROQ_API_KEY` (with the control plane, for Batch API jobs), no child holds a credential it does not use (read from /proc/<pid>/environ of
the real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bridge.kernel.config import child_environment
from controlplane.infra.processes import free_port, spawn, wait_for_port
from tests.conftest import REPO_ROOT
from tests.test_supervisor import wait_up

GROQ_KEY = "gsk_test_only_the_workers_hold_this"
SHELL = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "VIRTUAL_ENV": "/v", "HTTPS_PROXY": "http://proxy:3128",
    "GROQ_API_KEY": GROQ_KEY, "AWS_SECRET_ACCESS_KEY": "aws", "GITHUB_TOKEN": "ghp", "SSH_AUTH_SOCK": "/tmp/agent",
    "GROQPOLICY_TOKEN": "cli-token", "GROQPOLICY_TOKENS": "admin:t:admin", "GROQPOLICY_SIGNING_KEY_FILE": "/k.pem",
    "GROQPOLICY_BRIDGE_TOKEN_FILE": "/b", "GROQPOLICY_NATS_PASSWORD": "pw", "GROQPOLICY_NATS_USER": "u",
    "GROQPOLICY_PORT": "8015", "GROQPOLICY_VERIFICATION_KEY_FILE": "/pub.pem",
}
HARMLESS = {"PATH", "HOME", "LANG", "VIRTUAL_ENV", "HTTPS_PROXY", "GROQPOLICY_PORT", "GROQPOLICY_VERIFICATION_KEY_FILE"}
NATS = {"GROQPOLICY_NATS_PASSWORD", "GROQPOLICY_NATS_USER"}


@pytest.mark.parametrize(("role", "secrets"), [
    ("worker", {"GROQ_API_KEY"} | NATS),
    ("gateway", {"GROQPOLICY_BRIDGE_TOKEN_FILE"} | NATS),
    ("controlplane", {"GROQ_API_KEY", "GROQPOLICY_TOKENS", "GROQPOLICY_SIGNING_KEY_FILE", "GROQPOLICY_BRIDGE_TOKEN_FILE"} | NATS),
    ("emulator", set()),
])
def test_each_role_keeps_only_its_own_secrets_and_what_is_harmless(role, secrets):
    assert set(child_environment(role, SHELL)) == HARMLESS | secrets


@pytest.mark.parametrize("role", ["agent", "nats-server"])
def test_the_binaries_get_nothing_but_a_search_path(role):
    assert child_environment(role, SHELL) == {"PATH": "/usr/bin:/bin"}


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="unknown child role"):
        child_environment("tool", SHELL)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.slow
def test_up_gives_groq_api_key_to_the_workers_and_the_control_plane_only(tmp_path):
    """With a GROQ_API_KEY (an emulator that demands it stands in for GroqCloud) and foreign
    credentials in the shell, every child of `groqpolicy up` is read from /proc: the workers hold
    the key (and the model answers them), no other child holds it or any foreign credential."""
    emu_port = free_port()
    emulator = spawn("emulator", [sys.executable, "-m", "bridge.emulator", "--port", str(emu_port), "--api-key", GROQ_KEY],
                     tmp_path / "emulator.log")
    ports = {name: free_port() for name in ("cp", "agent", "nats", "bridge")}
    env = {**os.environ, "GROQ_API_KEY": GROQ_KEY, "GROQ_BASE_URL": f"http://127.0.0.1:{emu_port}",
           "AWS_SECRET_ACCESS_KEY": "aws-secret", "GROQPOLICY_TOKEN": "the-clis-token",
           "GROQPOLICY_PORT": str(ports["cp"]), "GROQPOLICY_AGENT_PORT": str(ports["agent"]),
           "GROQPOLICY_NATS_PORT": str(ports["nats"]), "GROQPOLICY_GATEWAY_PORT": str(ports["bridge"]),
           "GROQPOLICY_PROCESSES": "2"}
    log = tmp_path / "up.log"
    proc = None
    try:
        wait_for_port(emu_port, proc=emulator.proc)
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.ops.cli", "up", "--state-dir", str(tmp_path / "state")],
                                cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        text = wait_up(proc, log)
        assert "inference       GroqCloud (GROQ_API_KEY is set)" in text
        assert "/v1/infer/fast             -> allow by" in text  # the workers presented the key: the model answered
        health = httpx.get(f"http://127.0.0.1:{ports['cp']}/health", timeout=10).json()
        children = {c["name"]: environ_of(c["pid"]) for c in health["supervisor"]["children"]}
        assert set(children) == {"nats-server", "inference worker 1", "inference worker 2", "bridge gateway",
                                 "control plane", "control plane 2", "OPA agent"}
        holders = {name for name, environ in children.items() if "GROQ_API_KEY" in environ}
        # the control plane's processes: Batch API jobs
        assert holders == {"inference worker 1", "inference worker 2", "control plane", "control plane 2"}
        assert all(children[w]["GROQ_API_KEY"] == GROQ_KEY for w in holders)
        for name, environ in children.items():
            assert not {"AWS_SECRET_ACCESS_KEY", "GROQPOLICY_TOKEN"} & set(environ), name
            assert GROQ_KEY not in "".join(environ.values()) or name in holders, name
        assert set(children["OPA agent"]) <= {"PATH"} and set(children["nats-server"]) <= {"PATH"}
        seeds = {name: Path(environ["GROQPOLICY_NATS_NKEY"]).name for name, environ in children.items()
                 if "GROQPOLICY_NATS_NKEY" in environ}  # each NATS role its own identity, no one another's
        assert seeds == {"inference worker 1": "worker.nk", "inference worker 2": "worker.nk",
                         "bridge gateway": "gateway.nk", "control plane": "controlplane.nk", "control plane 2": "controlplane.nk"}
        assert "GROQPOLICY_BRIDGE_TOKEN_FILE" not in children["inference worker 1"]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        emulator.stop()
