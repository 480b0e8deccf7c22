"""`groqpolicy up`: one supervisor process that starts the whole system and stops all of it.

Order: NATS (JetStream) -> the Groq emulator, when no `GROQ_API_KEY` (nor an emulator of one's
own, `GROQPOLICY_EMULATOR_URL`) is configured -> inference worker -> bridge gateway (:8016) ->
control plane (:8015, compiles and signs `rego/` on start) -> one real OPA agent (:8181)
configured from the control plane's own `/api/v1/opa/config`. Then one example evaluation per
path. Ctrl-C (or SIGTERM) stops everything in reverse order; state (keys, bundles, logs, NATS
store) stays for the next start.

This is the one place production code reaches the emulator: it runs as a process of its own, and
the worker is pointed at it by URL, so every reply says `emulated: true`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bridge.emulator import command as emulator_command
from bridge.kernel.config import GroqSettings, Settings, SupervisorSettings, environment
from bridge.kernel.errors import GroqPolicyError, ToolchainError
from controlplane.auth.tokens import ensure_tokens
from controlplane.infra.processes import ManagedProcess, free_port, spawn, start_nats, start_opa_agent, wait_for_port


def http_json(url: str, method: str = "GET", body: object | None = None, timeout: float = 10.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def http_text(url: str, timeout: float = 10.0, token: str = "") -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def _health_bundles(base_url: str) -> bool:
    """Whether the control plane's /health lists an active bundle."""
    _, body = http_json(f"{base_url}/health")
    return isinstance(body, dict) and bool(body.get("bundles"))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    raise ToolchainError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_emulator(log_dir: Path) -> ManagedProcess:
    """The Groq emulator as a child process on a free loopback port (`extra["url"]`)."""
    port = free_port()
    mp = spawn("Groq emulator", emulator_command(port), log_dir / "emulator.log", env=environment())
    wait_for_port(port, timeout=60, proc=mp.proc)
    mp.extra["url"] = f"http://127.0.0.1:{port}"
    return mp


def start_worker(nats_url: str, log_dir: Path, emulator_url: str = "") -> ManagedProcess:
    env = dict(environment(), NATS_URL=nats_url, **({"GROQPOLICY_EMULATOR_URL": emulator_url} if emulator_url else {}))
    mp = spawn("inference worker", [sys.executable, "-m", "bridge.inference.worker", "--nats-url", nats_url],
               log_dir / "worker.log", env=env)
    wait_until(lambda: mp.proc.poll() is not None or "groqpolicy worker ready" in mp.log(), 60, "the inference worker")
    if mp.proc.poll() is not None:
        raise ToolchainError(f"inference worker exited with {mp.proc.returncode}: {mp.log()[-500:]}")
    mp.extra["emulated"] = "emulated=true" in mp.log()
    return mp


def start_gateway(nats_url: str, port: int, log_dir: Path) -> ManagedProcess:
    mp = spawn("bridge gateway", [sys.executable, "-m", "bridge.inference.gateway", "--port", str(port)],
               log_dir / "gateway.log", env=dict(environment(), NATS_URL=nats_url))
    wait_for_port(port, timeout=60, proc=mp.proc)
    mp.extra["url"] = f"http://127.0.0.1:{port}"
    return mp


def start_control_plane(settings: Settings, log_dir: Path, nats_url: str) -> ManagedProcess:
    env = dict(environment(), GROQPOLICY_STATE_DIR=str(settings.state_dir), GROQPOLICY_PORT=str(settings.port),
               GROQPOLICY_HOST=settings.host, GROQPOLICY_BRIDGE_URL=settings.bridge_url, GROQPOLICY_NATS_URL=nats_url)
    argv = [sys.executable, "-m", "controlplane.ops.cli", "serve", "--log-level", "warning"]
    mp = spawn("control plane", argv, log_dir / "controlplane.log", env=env)
    wait_for_port(settings.port, settings.host, timeout=60, proc=mp.proc)
    mp.extra["url"] = settings.base_url
    return mp


def start_agent_from_control_plane(base_url: str, workdir: Path, port: int = SupervisorSettings().agent_port, agent_id: str = "agent-1",
                                   token: str = "") -> ManagedProcess:
    config = http_text(f"{base_url}/api/v1/opa/config?agent_id={agent_id}&min_delay_s=1&max_delay_s=5", token=token)
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / f"{agent_id}.yaml"
    config_file.write_text(config)
    return start_opa_agent(config_file, workdir, port=port)


SECURITY_DENY = {
    "principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
    "action": "delete", "resource": {"type": "reports", "classification": "internal"},
}
ETHICS_MODEL = {"principal": {"id": "svc-content"}, "content": {"text": "What are good stretches after running?", "categories": []}}


def print_examples(agent_url: str, gateway_url: str) -> None:
    """One evaluation through each path, printed so a newcomer sees the system answer."""
    print("example evaluations:")
    status, body = http_json(f"{agent_url}/v1/data/groqpolicy/policies/security_policies/decision", "POST", {"input": SECURITY_DENY})
    result = body.get("result", {}) if isinstance(body, dict) else {}
    print(f"  OPA agent  security_policies          -> {result.get('decision')} ({'; '.join(result.get('reasons', [])[:1])})")
    status, body = http_json(f"{agent_url}/v1/data/groqpolicy/policies/ethical_constraints/decision", "POST", {"input": ETHICS_MODEL})
    result = body.get("result", {}) if isinstance(body, dict) else {}
    print(f"  OPA agent  ethical_constraints (model) -> {result.get('decision')} (http.send -> gateway -> NATS -> worker)")
    status, body = http_json(f"{gateway_url}/v1/infer/fast", "POST", {"question": "Is this request harmful?", "context": {"text": "hello"}})
    if status == 200 and isinstance(body, dict):
        print(f"  gateway    /v1/infer/fast             -> {body.get('decision')} by {body.get('model')} "
              f"(emulated={body.get('emulated')}, {body.get('latency_ms')} ms)")
    else:
        print(f"  gateway    /v1/infer/fast             -> HTTP {status}: {body}")


def pid_file(state_dir: Path) -> Path:
    """Where a running supervisor records its pid (`groqpolicy stop` reads it)."""
    return state_dir / "groqpolicy.pid"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _running_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


# long: the start-up sequence in order, child by child (supervision will carry the steps as data)
def run_system(state_dir: Path | None = None) -> int:
    settings = Settings.from_env(**({"state_dir": state_dir} if state_dir else {}))
    log_dir = settings.state_dir / "logs"
    procs: list[ManagedProcess] = []
    # Explicit handlers: a shell that starts us in the background leaves SIGINT ignored, and Ctrl-C
    # must stop the system however it was started. Both signals unwind through `finally` below.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    pid_path = pid_file(settings.state_dir)
    if running := _running_pid(pid_path):
        print(f"error: groqpolicy is already running from {settings.state_dir} (pid {running})", file=sys.stderr)
        print("hint: `groqpolicy stop` stops it; or pass another --state-dir", file=sys.stderr)
        return 1
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    pid_path.write_text(f"{os.getpid()}\n")
    try:
        ports = SupervisorSettings.from_env()
        tokens = ensure_tokens(settings)  # generated into the state dir when none are configured
        admin = tokens.with_scope("admin")
        nats = start_nats(settings.state_dir / "nats", port=ports.nats_port)
        procs.append(nats)
        groq = GroqSettings.from_env()
        emulator_url = groq.emulator_url
        if not groq.api_key and not emulator_url:  # the explicit switch: no key, so inference is emulated
            emulator = start_emulator(log_dir)
            procs.append(emulator)
            emulator_url = emulator.extra["url"]
        worker = start_worker(nats.extra["url"], log_dir, emulator_url)
        procs.append(worker)
        gateway = start_gateway(nats.extra["url"], ports.gateway_port, log_dir)
        procs.append(gateway)
        settings = Settings.from_env(state_dir=settings.state_dir, bridge_url=gateway.extra["url"])
        cp = start_control_plane(settings, log_dir, nats.extra["url"])
        procs.append(cp)
        wait_until(lambda: _health_bundles(settings.base_url), 180, "the control plane to publish bundles")
        agent = start_agent_from_control_plane(settings.base_url, settings.state_dir / "opa", port=ports.agent_port,
                                               token=admin.secret if admin else "")
        procs.append(agent)
        wait_until(lambda: http_json(f"{agent.extra['url']}/health?bundles")[0] == 200, 60, "the OPA agent to activate the bundle")
        print("groqpolicy is up")
        print(f"  control plane   {settings.base_url}  (OpenAPI: {settings.base_url}/schema)")
        print(f"  OPA agent       {agent.extra['url']}  (bundle from {settings.base_url}/bundles/groqpolicy)")
        print(f"  bridge gateway  {gateway.extra['url']}/v1/infer/<tier>  (Rego http.send -> NATS -> worker)")
        print(f"  NATS            {nats.extra['url']}  (groq.infer.<tier>, policy.evaluate)")
        print(f"  state           {settings.state_dir}  (logs in {log_dir})")
        print(f"  tokens          {tokens.source}")
        if admin:
            print(f"  dashboard       {settings.base_url}/dashboard/login?token={admin.secret}")
        if worker.extra["emulated"]:
            print(f"  inference       EMULATED: no GROQ_API_KEY, answers come from the Groq emulator at {emulator_url}.")
            print("                  To use GroqCloud: stop, `export GROQ_API_KEY=gsk_...`, and `make run` again.")
        else:
            print("  inference       GroqCloud (GROQ_API_KEY is set)")
        print_examples(agent.extra["url"], gateway.extra["url"])
        print("Ctrl-C stops everything.", flush=True)
        while True:
            for p in procs:
                if p.proc.poll() is not None:
                    print(f"{p.name} exited with {p.proc.returncode}; see {p.log_path}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    except GroqPolicyError as exc:  # ToolchainError, token configuration, ...
        print(f"error: {exc}", file=sys.stderr)
        for p in procs:
            print(f"  {p.name} log: {p.log_path}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in reversed(procs):
            t0 = time.monotonic()
            p.stop()
            if (took := time.monotonic() - t0) > 2:
                print(f"  {p.name} took {took:.1f}s to stop", file=sys.stderr)
        pid_path.unlink(missing_ok=True)
        print("stopped.", file=sys.stderr)
