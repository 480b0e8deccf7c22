"""The processes of `groqpolicy up`, each as a `Child` the supervisor can start again and again
(controlplane.infra.supervision): NATS, the Groq emulator, the inference workers, the bridge
gateway, the control plane and the OPA agent.

Whatever a child's clients hold on to stays the same across its restarts: NATS and the gateway
come back on their ports, the emulator on the port it got first, the agent with the same config.
The control plane goes further: the supervisor binds its listening socket once and every control
plane it starts serves on that socket (`serve --fd`). A connection that arrives while the control
plane restarts waits in the kernel's backlog and is answered by the next one, so callers see a slow
answer, never a refused connection. (A request the dying process had already accepted is lost with
it: the caller sees the connection close and retries.)

Environments: each child gets the supervisor's environment less every secret its role does not use
(bridge.kernel.config.children): only the inference workers hold `GROQ_API_KEY`, only the control
plane the API tokens and signing keys. NATS identities: with the embedded server, each child presents its own role's nkey
(controlplane.infra.natsauth) and nothing a parent shell might hold (`GROQPOLICY_NATS_CREDS`, ...)
leaks into it; the OPA agent gets nothing but PATH (every policy can read its environment), a
token-authenticated REST API and a persistence directory (controlplane.infra.processes). With `GROQPOLICY_NATS_URL` (a cluster
someone else runs) no NATS is started, and every child presents the credential configured there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bridge.kernel.config import NatsSettings, Settings, SigningSettings, SupervisorSettings, child_environment
from controlplane.agents.sandbox import bridge_token, bridge_token_path
from controlplane.app import CONTROL_PLANE_READY
from controlplane.auth.tokens import default_tokens_file
from controlplane.infra.listener import SharedListener
from controlplane.infra.natsauth import NatsAuth, bootstrap
from controlplane.infra.private import write_private
from controlplane.infra.processes import (
    ManagedProcess,
    free_port,
    launch_nats,
    launch_opa_agent,
    port_open,
    spawn,
)
from controlplane.infra.recordkeys import KEY_DIR, SIGNING_FILE, TRUSTED_DIR
from controlplane.infra.supervision import STATUS_FILE, Child, status_path
from controlplane.services import jetstream_steps

BOOTSTRAP_S = 30.0  # how long creating the streams and buckets may take (a cluster electing leaders)
WORKER_READY = "groqpolicy worker ready"
# what a child must not inherit from the shell when it is given its own NATS identity
NATS_CREDENTIAL_VARIABLES = frozenset(NatsSettings.ENV) - {"GROQPOLICY_NATS_CONNECT_TIMEOUT_S"}


def http_json(url: str, method: str = "GET", body: object | None = None, timeout: float = 10.0,
              token: str = "") -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def http_text(url: str, timeout: float = 10.0, token: str = "") -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode()


def replica_environment(settings: Settings, number: int) -> dict[str, str]:
    """Where control-plane process `number` of the deployment whose first process keeps
    `settings.state_dir` keeps its own state, and the shared secrets it reads from that state dir
    (the files the first process generated; configured ones reach every process already)."""
    state = settings.state_dir
    if number == 1:
        return {"GROQPOLICY_STATE_DIR": str(state)}
    own = state / "processes" / str(number)
    trusted = own / KEY_DIR / TRUSTED_DIR
    trusted.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = {public.name: public for public in (state / KEY_DIR / TRUSTED_DIR).glob("*.pem")}
    for public in source.values():  # retired keys stay trusted here too
        if not (trusted / public.name).exists():
            write_private(trusted / public.name, public.read_text())
    for copied in trusted.glob("*.pem"):  # a key removed there is distrusted here too
        if copied.name not in source:
            copied.unlink()
    status = own / STATUS_FILE  # /health and the dashboard show the supervisor's view
    if not status.is_symlink():
        status.unlink(missing_ok=True)
        status.symlink_to(status_path(state))
    env = {"GROQPOLICY_STATE_DIR": str(own), "GROQPOLICY_BRIDGE_TOKEN_FILE": str(bridge_token_path(settings)),
           "GROQPOLICY_RECORD_KEY_FILE": str(settings.record_key_file or state / KEY_DIR / SIGNING_FILE)}
    if not settings.tokens and not settings.tokens_file:
        env["GROQPOLICY_TOKENS_FILE"] = str(default_tokens_file(state))
    if not SigningSettings.from_env().key_pem and not settings.signing_key_file:
        env["GROQPOLICY_SIGNING_KEY_FILE"] = str(state / "keys" / f"{settings.signing_kid}.pem")
    return env


class System:
    """Where every child of one `groqpolicy up` lives, and how each one is started."""

    def __init__(self, settings: Settings, ports: SupervisorSettings, log_dir: Path) -> None:
        self.settings = settings
        self.ports = ports
        self.log_dir = log_dir
        self.external = bool(settings.nats_url)
        self.nats_url = settings.nats_url or f"nats://127.0.0.1:{ports.nats_port}"
        self.auth = None if self.external else NatsAuth(settings.state_dir / "nats" / "auth")
        self.emulator_url = ""
        self.listener: SharedListener | None = None

    # -- environments -------------------------------------------------------------------------

    def env(self, role: str | None) -> dict[str, str]:
        """A child's environment: ours less the secrets `role` does not use (`child_environment`),
        NATS's URL, and the credential of `role` (None: the emulator, no NATS)."""
        env = child_environment(role or "emulator")
        if self.auth is not None or role is None:
            env = {k: v for k, v in env.items() if k not in NATS_CREDENTIAL_VARIABLES}
        if role is None:
            return env
        env.update(NATS_URL=self.nats_url, GROQPOLICY_NATS_URL=self.nats_url)
        if self.auth is not None:
            env.update(self.auth.child_env(role))
        return env

    def bootstrap(self) -> None:
        """Create the streams and buckets (after every NATS start: a no-op when they are there)."""
        credential = self.auth if self.auth is not None else NatsSettings.from_env()
        steps = jetstream_steps(self.settings)
        asyncio.run(asyncio.wait_for(bootstrap(self.nats_url, credential, steps), BOOTSTRAP_S))

    # -- the children --------------------------------------------------------------------------

    def nats(self) -> Child:
        auth = self.auth
        assert auth is not None
        auth.ensure()
        port = self.ports.nats_port
        return Child("nats-server", lambda: launch_nats(self.settings.state_dir / "nats", port=port,
                                                        extra_args=auth.server_args()),
                     ready=lambda _: port_open(port), after_ready=lambda _: self.bootstrap(), start_timeout_s=30)

    def emulator(self, command: Callable[[int], list[str]]) -> Child:
        """The Groq emulator, started by `command(port)` (the supervisor holds the one switch to it)."""
        port = free_port()  # once: the workers are told this URL, and it stays theirs across restarts
        self.emulator_url = f"http://127.0.0.1:{port}"
        return Child("Groq emulator", lambda: spawn("Groq emulator", command(port), self.log_dir / "emulator.log",
                                                    env=self.env(None)),
                     ready=lambda _: port_open(port))

    def worker(self, number: int) -> Child:
        name = f"inference worker {number}"

        def launch() -> ManagedProcess:
            env = self.env("worker")
            if self.emulator_url:
                env["GROQPOLICY_EMULATOR_URL"] = self.emulator_url
            argv = [sys.executable, "-m", "bridge.inference.worker", "--nats-url", self.nats_url]
            return spawn(name, argv, self.log_dir / f"worker-{number}.log", env=env)

        return Child(name, launch, ready=lambda mp: WORKER_READY in mp.own_log(), group="inference workers")

    def gateway(self) -> Child:
        port = self.ports.gateway_port
        argv = [sys.executable, "-m", "bridge.inference.gateway", "--port", str(port)]
        bridge_token(self.settings)  # generated before either side needs it: the gateway and the control plane
        env = dict(self.env("gateway"), GROQPOLICY_BRIDGE_TOKEN_FILE=str(bridge_token_path(self.settings)))
        return Child("bridge gateway", lambda: spawn("bridge gateway", argv, self.log_dir / "gateway.log", env=env),
                     ready=lambda _: port_open(port))

    def control_planes(self, bridge_url: str) -> list[Child]:
        """`GROQPOLICY_PROCESSES` control planes, all serving the one socket the supervisor holds:
        each new connection goes to the process that holds the fewest (`SharedListener`), so HTTP
        parsing, evaluation and audit appends spread over every core. Each process is a replica as one on
        another machine would be (its own state dir, the deployment's keys, tokens and JetStream
        state shared); the first keeps `<state>` itself, so one process is exactly today's shape."""
        settings = self.settings
        self.listener = listener = SharedListener(settings.host, settings.port, self.ports.processes)
        argv = [sys.executable, "-m", "controlplane.ops.cli", "serve", "--log-level", "warning"]

        def child(number: int) -> Child:
            name = "control plane" if number == 1 else f"control plane {number}"
            log_path = self.log_dir / ("controlplane.log" if number == 1 else f"controlplane-{number}.log")

            def launch() -> ManagedProcess:
                env = dict(self.env("controlplane"), GROQPOLICY_PORT=str(settings.port), GROQPOLICY_HOST=settings.host,
                           GROQPOLICY_BRIDGE_URL=bridge_url, GROQPOLICY_PROCESSES=str(self.ports.processes),
                           **replica_environment(settings, number))
                if self.emulator_url:  # as the workers are: where `impact --via batch` sends its Batch API jobs
                    env["GROQPOLICY_EMULATOR_URL"] = self.emulator_url
                listener.vacate(number)  # a killed predecessor's count must not hold connections back
                return spawn(name, [*argv, *listener.serve_args(number)], log_path, env=env, pass_fds=listener.pass_fds)

            # the port always accepts (the socket is ours) and any process may answer a probe on
            # it: each process says itself when its start-up is complete. A dead process's last count
            # is cleared as soon as its death is seen: until its replacement accepts (a restart delay,
            # or never once the supervisor gives up on it) no peer waits on it for each new connection
            return Child(name, launch, ready=lambda mp: CONTROL_PLANE_READY in mp.own_log(), start_timeout_s=180,
                         on_exit=functools.partial(listener.vacate, number), group="control planes")

        return [child(n) for n in range(1, self.ports.processes + 1)]

    def agent(self, token: str, agent_id: str = "agent-1") -> Child:
        """The OPA agent, configured once from the control plane's own /api/v1/opa/config (a restart
        reuses that file, and the agent its persisted bundle, so it needs no control plane to come
        back). It runs with a minimal environment, and its REST API admits only the tokens whose
        digests the bundle carries (rego/system/authz.rego)."""
        base, workdir, port = self.settings.base_url, self.settings.state_dir / "opa", self.ports.agent_port
        config = http_text(f"{base}/api/v1/opa/config?agent_id={agent_id}&min_delay_s=1&max_delay_s=5", token=token)
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        config_file = workdir / f"{agent_id}.yaml"
        write_private(config_file, config)  # it carries the agent's token
        return Child("OPA agent", lambda: launch_opa_agent(config_file, workdir, port=port, authenticated=True),
                     ready=lambda _: port_open(port))

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
