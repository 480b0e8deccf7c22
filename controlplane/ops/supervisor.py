"""`groqpolicy up`: one supervisor process that starts the whole system, keeps it running, and
stops all of it.

Order: NATS (JetStream; it admits only the identities generated under `<state>/nats/auth`, and the
streams and buckets are created first by the bootstrap identity) -> the Groq emulator, when no
`GROQ_API_KEY` (nor an emulator of one's own, `GROQPOLICY_EMULATOR_URL`) is configured -> the
inference workers (`GROQPOLICY_WORKERS`, two by default: one queue group, so one can die without a
gap) -> bridge gateway (:8016) -> control plane (:8015, compiles and signs `rego/` on start;
`GROQPOLICY_PROCESSES` processes on the one socket, the first before the others) -> one
real OPA agent (:8181) configured from the control plane's own `/api/v1/opa/config`. Then one
example evaluation per path.

From then on a child that dies is started again, with backoff and a restart budget
(controlplane.infra.supervision): one line on stderr per restart, and the supervisor's view in
`<state>/supervisor.json`, which the control plane's `/health` and the dashboard show. While the
control plane restarts its port keeps accepting (controlplane.ops.system). Ctrl-C (or SIGTERM)
stops everything in reverse order; state (keys, bundles, logs, NATS store) stays for the next start.

This is the one place production code reaches the emulator: it runs as a process of its own, and
the workers are pointed at it by URL, so every reply says `emulated: true`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from bridge.emulator import command as emulator_command
from bridge.kernel.config import GroqSettings, Settings, SupervisorSettings
from bridge.kernel.errors import GroqPolicyError, ToolchainError
from controlplane.agents.sandbox import bridge_token
from controlplane.auth.tokens import TokenSet, ensure_tokens
from controlplane.infra.supervision import Supervisor, status_path
from controlplane.ops.system import System, http_json, http_text

__all__ = ["http_json", "http_text", "pid_file", "run_system"]


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


SECURITY_DENY = {
    "principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
    "action": "delete", "resource": {"type": "reports", "classification": "internal"},
}
ETHICS_MODEL = {"principal": {"id": "svc-content"}, "content": {"text": "What are good stretches after running?", "categories": []}}


def print_examples(agent_url: str, gateway_url: str, evaluate_token: str, bridge: str) -> None:
    """One evaluation through each path, printed so a newcomer sees the system answer (each path
    presenting its token: the agent's REST API and the gateway admit no anonymous caller)."""
    print("example evaluations:")
    status, body = http_json(f"{agent_url}/v1/data/groqpolicy/policies/security_policies/decision", "POST",
                             {"input": SECURITY_DENY}, token=evaluate_token)
    result = body.get("result", {}) if isinstance(body, dict) else {}
    print(f"  OPA agent  security_policies          -> {result.get('decision')} ({'; '.join(result.get('reasons', [])[:1])})")
    status, body = http_json(f"{agent_url}/v1/data/groqpolicy/policies/ethical_constraints/decision", "POST",
                             {"input": ETHICS_MODEL}, token=evaluate_token)
    result = body.get("result", {}) if isinstance(body, dict) else {}
    print(f"  OPA agent  ethical_constraints (model) -> {result.get('decision')} (http.send -> gateway -> NATS -> worker)")
    status, body = http_json(f"{gateway_url}/v1/infer/fast", "POST",
                             {"question": "Is this request harmful?", "context": {"text": "hello"}}, token=bridge)
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


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} supervisor: {line}", file=sys.stderr, flush=True)


def _start(system: System, sup: Supervisor, tokens: TokenSet) -> dict[str, str]:
    """Start every child in order, each ready before the next; the URLs to print."""
    settings, ports = system.settings, system.ports
    if not system.external:
        sup.start(system.nats())
    else:
        try:  # a cluster someone else runs: create what is missing if our credential may
            system.bootstrap()
        except (GroqPolicyError, OSError, TimeoutError) as exc:
            _say(f"bootstrap on {system.nats_url} did not complete ({exc}); the streams must exist already")
    groq = GroqSettings.from_env()
    system.emulator_url = groq.emulator_url
    if not groq.api_key and not groq.emulator_url:  # the explicit switch: no key, so inference is emulated
        sup.start(system.emulator(emulator_command))
    workers = [sup.start(system.worker(n)) for n in range(1, ports.workers + 1)]
    gateway_url = f"http://127.0.0.1:{ports.gateway_port}"
    sup.start(system.gateway())
    # the first process generates what the deployment shares (keys) before the others read it
    for child in system.control_planes(bridge_url=gateway_url):
        sup.start(child)
    wait_until(lambda: _health_bundles(settings.base_url), 180, "the control plane to publish bundles")
    admin = tokens.with_scope("admin")
    agent = sup.start(system.agent(token=admin.secret if admin else ""))
    wait_until(lambda: http_json(f"{agent.extra['url']}/health?bundles")[0] == 200, 60, "the OPA agent to activate the bundle")
    return {"agent": agent.extra["url"], "gateway": gateway_url,
            "emulated": "yes" if "emulated=true" in workers[0].own_log() else ""}


def sign_in_link(base_url: str, tokens: TokenSet) -> str:
    """A one-time dashboard sign-in link from the control plane (never the token itself: stdout
    ends up in logs); "" without an admin token or when the control plane does not answer."""
    admin = tokens.with_scope("admin")
    if admin is None:
        return ""
    try:
        status, body = http_json(f"{base_url}/dashboard/codes", "POST", {}, token=admin.secret)
    except (OSError, ValueError):
        return ""
    return str(body.get("url", "")) if status == 201 and isinstance(body, dict) else ""


def _banner(system: System, urls: dict[str, str], tokens: TokenSet) -> None:
    settings, log_dir = system.settings, system.log_dir
    print("groqpolicy is up")
    print(f"  control plane   {settings.base_url}  (OpenAPI: {settings.base_url}/schema)")
    print(f"  OPA agent       {urls['agent']}  (bundle from {settings.base_url}/bundles/groqpolicy)")
    print(f"  bridge gateway  {urls['gateway']}/v1/infer/<tier>  (Rego http.send -> NATS -> worker)")
    print(f"  NATS            {system.nats_url}  (groq.infer.<tier>, policy.evaluate)")
    if system.auth is not None:
        print(f"  NATS identities {system.auth.dir}  (one nkey per role; anonymous clients are refused)")
    else:
        print("  NATS identities the credential configured for GROQPOLICY_NATS_URL (every process presents it)")
    print(f"  workers         {system.ports.workers}, restarted with every other child when they die "
          f"(status: {settings.base_url}/health)")
    print(f"  state           {settings.state_dir}  (logs in {log_dir})")
    print(f"  tokens          {tokens.source}")
    if link := sign_in_link(settings.base_url, tokens):
        print(f"  dashboard       {link}  (one-time, 5 minutes; `groqpolicy dashboard` prints a new one)")
    if urls["emulated"]:
        print(f"  inference       EMULATED: no GROQ_API_KEY, answers come from the Groq emulator at {system.emulator_url}.")
        print("                  To use GroqCloud: stop, `export GROQ_API_KEY=gsk_...`, and `make run` again.")
    else:
        print("  inference       GroqCloud (GROQ_API_KEY is set)")


def run_system(state_dir: Path | None = None) -> int:
    settings = Settings.from_env(**({"state_dir": state_dir} if state_dir else {}))
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
    sup = Supervisor(status_path(settings.state_dir), say=_say)
    system: System | None = None
    try:
        system = System(settings, SupervisorSettings.from_env(), settings.state_dir / "logs")
        tokens = ensure_tokens(settings)  # generated into the state dir when none are configured
        urls = _start(system, sup, tokens)
        _banner(system, urls, tokens)
        evaluate = tokens.with_scope("evaluate")
        print_examples(urls["agent"], urls["gateway"], evaluate.secret if evaluate else "", bridge_token(settings))
        print("Ctrl-C stops everything.", flush=True)
        sup.run_forever()
        return 0
    except KeyboardInterrupt:
        return 0
    except GroqPolicyError as exc:  # ToolchainError, token configuration, ...
        print(f"error: {exc}", file=sys.stderr)
        for run in sup.runs:
            if run.proc is not None:
                print(f"  {run.child.name} log: {run.proc.log_path}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop_all()
        if system is not None:
            system.close()
        pid_path.unlink(missing_ok=True)
        print("stopped.", file=sys.stderr)
