"""`groqpolicy up` as a user runs it: everything comes up, answers, stops cleanly, restarts on its state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from controlplane.infra.processes import free_port
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # field 4 of /proc/<pid>/stat is the parent pid (after the parenthesised command name)
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def admin_headers(state: Path) -> dict[str, str]:
    """`groqpolicy up` generated the tokens into the state dir (none configured)."""
    from bridge.kernel.config import Settings
    from controlplane.auth.tokens import ensure_tokens

    return {"Authorization": f"Bearer {ensure_tokens(Settings(state_dir=state)).by_name('admin').secret}"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_up(state: Path, ports: dict[str, int], log: Path) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"},
        "GROQPOLICY_PORT": str(ports["cp"]),
        "GROQPOLICY_AGENT_PORT": str(ports["agent"]),
        "GROQPOLICY_NATS_PORT": str(ports["nats"]),
        "GROQPOLICY_GATEWAY_PORT": str(ports["bridge"]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "controlplane.ops.cli", "up", "--state-dir", str(state)],
        cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )


def wait_up(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "Ctrl-C stops everything." in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"groqpolicy up exited with {proc.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"groqpolicy up did not come up:\n{log.read_text()}")


def test_up_runs_the_system_stops_cleanly_and_reuses_state(tmp_path):
    state = tmp_path / "state"
    ports = {name: free_port() for name in ("cp", "agent", "nats", "bridge")}
    log = tmp_path / "up.log"
    proc = start_up(state, ports, log)
    try:
        text = wait_up(proc, log)
        assert f"http://127.0.0.1:{ports['cp']}" in text and f"http://127.0.0.1:{ports['agent']}" in text
        assert "EMULATED: no GROQ_API_KEY" in text and "GROQ_API_KEY=" in text
        assert "OPA agent  security_policies          -> deny" in text
        assert "(model) -> allow" in text or "(model) -> deny" in text or "(model) -> review" in text
        assert "/v1/infer/fast             -> allow by" in text
        kids = children_of(proc.pid)
        assert len(kids) >= 5, kids  # nats-server, worker, gateway, control plane, opa agent
        agent = f"http://127.0.0.1:{ports['agent']}"
        r = httpx.post(f"{agent}/v1/data/groqpolicy/policies/security_policies/decision", json={"input": {
            "principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
            "action": "delete", "resource": {"type": "reports", "classification": "internal"}}})
        assert r.json()["result"]["decision"] == "deny"
        first = httpx.get(f"http://127.0.0.1:{ports['cp']}/api/v1/bundles", headers=admin_headers(state)).json()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    time.sleep(0.2)
    assert [k for k in kids if alive(k)] == [], "Ctrl-C must leave no process behind"

    # second start: same key, same revision and ETag (state reused, nothing rebuilt)
    proc = start_up(state, ports, log)
    try:
        wait_up(proc, log)
        second = httpx.get(f"http://127.0.0.1:{ports['cp']}/api/v1/bundles", headers=admin_headers(state)).json()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert {(b["target"], b["revision"], b["etag"]) for b in second} == {(b["target"], b["revision"], b["etag"]) for b in first}
    assert len(list((state / "keys").glob("*.pem"))) == 2  # private + public, generated once
