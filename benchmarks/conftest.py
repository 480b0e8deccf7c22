"""The benchmark modules' shared stack: every server of the system in its own process, started once per
session for `test_api_evaluate.py` and `test_fixed_load.py`: nats-server, the emulator, one inference
worker, the gateway, the control plane (`python -m controlplane.ops.cli serve`), the framework floor
(`benchmarks/api/trivial_app.py`) and an `opa run --server` agent (error-level logs) configured from
the control plane's `/api/v1/opa/config`; the library's `risk_management` (rules only) and
`ethical_constraints` (asks the model) stored through `POST /api/v1/policies`, so both engines run
the same signed bundle.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import TOKEN, spawn
from bridge.kernel.config import Settings
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.app import CONTROL_PLANE_READY
from controlplane.infra.listener import SharedListener
from controlplane.infra.processes import free_port, start_nats, start_opa_agent, wait_for_port
from controlplane.ops.system import replica_environment
from tests.policy_examples import load_policy_examples

ROOT = Path(__file__).resolve().parent.parent
H = CONSTITUTIONAL_HASH


PROCESSES = 2  # the second control plane: this many processes on one socket, as `groqpolicy up` runs them


def wait_optimized(port: int, pids: list[int], timeout: float = 300) -> None:
    """Until each process `pids` behind `port` serves its revision on the serving compiler's code:
    after a policy write a process serves the new revision on Winch's code while Cranelift compiles
    it behind, at the lowest CPU priority (`bridge.opawasm.evaluator`); measured then, evaluations
    would time that code."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not set(pids) <= seen:
        assert time.monotonic() < deadline, f"processes {sorted(set(pids) - seen)} still on the baseline compiler's code"
        doc = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        if doc.get("evaluator", {}).get("code") == "optimized":
            seen.add(doc.get("process"))
        else:
            time.sleep(0.1)


def start_processes(tmp: Path, cp_env: dict[str, str], state: Path) -> tuple[int, list[subprocess.Popen], SharedListener]:
    """`PROCESSES` more control-plane processes of the deployment whose first process keeps `state`
    (replicas 2, 3, ...: its keys, tokens and JetStream state), all serving one listening socket
    held here, exactly as the supervisor starts them; (port, processes, the listener)."""
    listener = SharedListener("127.0.0.1", free_port(), PROCESSES)
    port = listener.port
    settings = Settings(state_dir=state, tokens=cp_env["GROQPOLICY_TOKENS"],
                        bridge_token_file=Path(cp_env["GROQPOLICY_BRIDGE_TOKEN_FILE"]))
    procs, logs = [], []
    for number in range(2, PROCESSES + 2):
        logs.append(tmp / f"cp-{number}.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "controlplane.ops.cli", "serve", *listener.serve_args(number - 1), "--log-level", "warning"],
            env=dict(cp_env, GROQPOLICY_PORT=str(port), GROQPOLICY_PROCESSES=str(PROCESSES), **replica_environment(settings, number)),
            cwd=ROOT,
            stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, start_new_session=True, pass_fds=listener.pass_fds))
    deadline = time.monotonic() + 120
    while not all(CONTROL_PLANE_READY in log.read_text() for log in logs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
        time.sleep(0.2)
    return port, procs, listener


@pytest.fixture(scope="session")
def api_stack():
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    ns = start_nats(tmp / "nats")
    url = ns.extra["url"]
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    procs: list[subprocess.Popen] = []
    agent = None
    multi_listener = None
    loop = asyncio.new_event_loop()
    try:
        emu_port, gw_port, cp_port, floor_port, agent_port = (free_port() for _ in range(5))
        procs.append(spawn([sys.executable, "-m", "bridge.emulator", "--port", str(emu_port)], tmp / "emu.log", env))
        wait_for_port(emu_port, proc=procs[-1])
        procs.append(spawn([sys.executable, "-m", "bridge.inference.worker"], tmp / "worker.log",
                            dict(env, NATS_URL=url, GROQPOLICY_EMULATOR_URL=f"http://127.0.0.1:{emu_port}")))
        (tmp / "bridge-token").write_text("bench-bridge-token-000000000")
        env["GROQPOLICY_BRIDGE_TOKEN_FILE"] = str(tmp / "bridge-token")  # the gateway and the control plane share it
        procs.append(spawn([sys.executable, "-m", "bridge.inference.gateway", "--port", str(gw_port)], tmp / "gw.log", dict(env, NATS_URL=url)))
        wait_for_port(gw_port, proc=procs[-1])
        cp_env = dict(env, GROQPOLICY_NATS_URL=url, GROQPOLICY_TOKENS=f"bench={TOKEN}:admin+evaluate+agent",
                      GROQPOLICY_RATE_LIMIT="off", GROQPOLICY_BRIDGE_URL=f"http://127.0.0.1:{gw_port}",
                      GROQPOLICY_OPA_URL=f"http://127.0.0.1:{agent_port}")
        procs.append(spawn([sys.executable, "-m", "controlplane.ops.cli", "serve", "--port", str(cp_port), "--state-dir",
                             str(tmp / "state"), "--log-level", "warning"], tmp / "cp.log", cp_env))
        wait_for_port(cp_port, timeout=90, proc=procs[-1])
        procs.append(spawn([sys.executable, "-m", "benchmarks.api.trivial_app", str(floor_port)], tmp / "floor.log", env))
        wait_for_port(floor_port, proc=procs[-1])
        multi_port, multi, multi_listener = start_processes(tmp, cp_env, tmp / "state")
        procs += multi

        admin = httpx.Client(base_url=f"http://127.0.0.1:{cp_port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        ex = load_policy_examples()
        ids = {}
        for ptype in ("risk_management", "ethical_constraints"):
            r = admin.post("/api/v1/policies", json={
                "name": ptype, "policy_type": ptype, "performance_tier": "nano" if ptype == "risk_management" else "fast",
                "opa_policy": (ROOT / "rego" / "policies" / ptype / "policy.rego").read_text(), "constitutional_hash": H})
            assert r.status_code == 201, r.text
            ids[ptype] = r.json()
        (tmp / "agent.yaml").write_text(admin.get("/api/v1/opa/config", params={"min_delay_s": 1, "max_delay_s": 2}).text)
        agent = start_opa_agent(tmp / "agent.yaml", tmp / "opa", port=agent_port, extra_args=["--log-level", "error"])
        probe = httpx.Client(base_url=agent.extra["url"], timeout=10)
        deadline = time.monotonic() + 60
        while probe.post(f"/v1/data/{ids['ethical_constraints']['entrypoint']}", json={"input": {}}).json().get("result") is None:
            assert time.monotonic() < deadline, "the OPA agent did not activate the bundle"
            time.sleep(0.2)
        wait_optimized(cp_port, [procs[3].pid])
        wait_optimized(multi_port, [p.pid for p in multi])
        rules_ctx = {**ex["risk_management"]["allow"], "principal": "bench"}
        model_ctx = {**ex["ethical_constraints"]["model_review"], "principal": "bench", "oversight": {"escalation": "bench"}}
        yield {"loop": loop, "tmp": tmp, "cp_port": cp_port, "floor_port": floor_port, "agent_port": agent_port,
               "ids": ids, "rules_ctx": rules_ctx, "model_ctx": model_ctx, "agent": agent, "admin": admin,
               "cp_pid": procs[3].pid, "floor_pid": procs[4].pid, "nats_url": url, "state_dir": tmp / "state",
               "multi_port": multi_port, "multi_pids": [p.pid for p in multi]}
    finally:
        if agent is not None:
            agent.stop()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        ns.stop()
        loop.close()
        if multi_listener is not None:
            multi_listener.close()
