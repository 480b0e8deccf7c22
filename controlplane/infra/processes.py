"""Start and stop the real external processes (nats-server, opa agents) on loopback.

Used by the supervisor (`groqpolicy up`) and by the tests; nothing here depends on a service
started by hand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.kernel.config import child_environment
from bridge.kernel.errors import ToolchainError
from controlplane.infra.private import open_private
from controlplane.infra.toolchain import nats_server_binary, opa_binary


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _program(proc: subprocess.Popen[Any]) -> str:
    """The program a process runs (the first word of its argv)."""
    args = proc.args
    if isinstance(args, str | bytes | os.PathLike):
        return os.fsdecode(args)
    return os.fsdecode(args[0])


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until something accepts connections on host:port; fail early if `proc` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ToolchainError(f"process {_program(proc)} exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ToolchainError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


KILL_WAIT_S = 60.0  # how long a stop waits for a SIGKILLed child to be gone before reporting it


@dataclass
class ManagedProcess:
    """A child process with its log file; stopping it never leaves it behind."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)
    log_offset: int = 0  # where this process's output starts in a log that earlier runs appended to

    def stop(self, timeout: float = 10.0, kill_wait: float = KILL_WAIT_S) -> bool:
        """SIGTERM, then SIGKILL after `timeout`; whether the process is gone. Never raises: a killed
        process can take a while to be reaped on a loaded machine (CI saw nats-server log its exit
        and not be gone 20 s later), so it is waited for up to `kill_wait` and then reported by
        the caller, which goes on stopping the others."""
        if self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            self.proc.wait(timeout=kill_wait)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def own_log(self) -> str:
        """What this process wrote (not the runs before it in the same log file)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def spawn(name: str, argv: list[str], log_path: Path, env: dict | None = None,
          pass_fds: tuple[int, ...] = (), cwd: Path | None = None) -> ManagedProcess:
    """Start `argv` in a session of its own (a Ctrl-C meant for the parent does not reach it), its
    output appended to `log_path`; `pass_fds` stay open in the child under the same numbers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: a child's output can carry what it was asked (inputs, policy text), never for other users
    log = open_private(log_path)
    offset = log.tell()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, pass_fds=pass_fds, cwd=cwd)
    log.close()
    return ManagedProcess(name=name, proc=proc, log_path=log_path, log_offset=offset)


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listen_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket that a child can inherit (`pass_fds`). Its owner keeps it open while
    children come and go: connections that arrive while no child accepts wait in the kernel's
    backlog instead of being refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ToolchainError(f"cannot listen on {host}:{port}: {exc.strerror}; is another groqpolicy running?") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def launch_nats(store_dir: Path, port: int | None = None, host: str = "127.0.0.1",
                extra_args: list[str] | None = None) -> ManagedProcess:
    """nats-server with JetStream on `store_dir`, on loopback; returns at once (see `start_nats`).

    With no `port` the server binds a random one itself and reports it in a ports file, which
    `start_nats` reads: a port picked here and released would leave a moment in which another
    process (a loaded test run starts many) could take it."""
    store_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = store_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    argv = [str(nats_server_binary()), "-a", host, "-p", str(port or -1), "--ports_file_dir", str(ports_dir),
            "-js", "-sd", str(store_dir), *(extra_args or [])]
    mp = spawn("nats-server", argv, store_dir / "nats-server.log", env=child_environment("nats-server"))
    mp.extra.update(url=f"nats://{host}:{port}" if port else "", port=port or 0, ports_dir=ports_dir)
    return mp


def _reported_port(mp: ManagedProcess, timeout: float = 20.0) -> int:
    """The client port a nats-server started on a random port wrote into its ports file."""
    ports_file = mp.extra["ports_dir"] / f"{Path(_program(mp.proc)).name}_{mp.proc.pid}.ports"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mp.proc.poll() is not None:
            raise ToolchainError(f"nats-server exited with {mp.proc.returncode} before listening (log: {mp.log_path})")
        try:
            urls = json.loads(ports_file.read_text())["nats"]
            return int(urllib.parse.urlsplit(urls[0]).port or 0)
        except (OSError, ValueError, KeyError, IndexError):  # not written yet, or half written
            time.sleep(0.05)
    raise ToolchainError(f"nats-server reported no port in {ports_file} after {timeout:.0f}s (log: {mp.log_path})")


def start_nats(store_dir: Path, port: int | None = None, host: str = "127.0.0.1", extra_args: list[str] | None = None) -> ManagedProcess:
    """nats-server with JetStream on `store_dir`, listening on loopback (a random port by default)."""
    mp = launch_nats(store_dir, port, host, extra_args)
    if not port:
        port = _reported_port(mp)
        mp.extra.update(url=f"nats://{host}:{port}", port=port)
    wait_for_port(mp.extra["port"], host, proc=mp.proc)
    return mp


AGENT_AUTH_ARGS = ("--authentication=token", "--authorization=basic")


def agent_environment() -> dict[str, str]:
    """The minimal environment of an `opa` agent: nothing but a search path. Every policy can read
    the agent's environment (`opa.runtime().env`), so tokens, NATS seeds and GROQ_API_KEY must never
    be in it."""
    return child_environment("agent")


def launch_opa_agent(config_file: Path, workdir: Path, port: int | None = None, host: str = "127.0.0.1",
                     extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                     authenticated: bool = False) -> ManagedProcess:
    """A real `opa run --server` agent configured from `config_file`, on loopback; returns at once.

    It runs in `workdir` with a minimal environment (`agent_environment()` unless `env` is given)
    and persists activated bundles in `workdir/persist` (0700: a bundle's data carries the bridge
    token), so a restart enforces the last revision even while the control plane is down.
    `authenticated` turns on OPA's token authentication and the bundle's `system.authz` policy."""
    port = port or free_port(host)
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    persist = workdir / "persist"
    persist.mkdir(mode=0o700, exist_ok=True)
    persist.chmod(0o700)
    argv = [
        str(opa_binary()), "run", "--server", "--addr", f"{host}:{port}",
        "--config-file", str(config_file.resolve()), "--log-level", "info", "--skip-version-check",
        "--set", f"persistence_directory={persist}",
        *(AGENT_AUTH_ARGS if authenticated else ()), *(extra_args or []),
    ]
    mp = spawn("opa", argv, workdir / f"opa-{port}.log", env=agent_environment() if env is None else env, cwd=workdir)
    mp.extra.update(url=f"http://{host}:{port}", port=port)
    return mp


def start_opa_agent(config_file: Path, workdir: Path, port: int | None = None, host: str = "127.0.0.1",
                    extra_args: list[str] | None = None, authenticated: bool = False) -> ManagedProcess:
    """A real `opa run --server` agent configured from `config_file`, listening on loopback."""
    mp = launch_opa_agent(config_file, workdir, port, host, extra_args, authenticated=authenticated)
    wait_for_port(mp.extra["port"], host, proc=mp.proc)
    return mp
