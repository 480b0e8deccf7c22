"""Start and stop the real external processes (nats-server, opa agents) on loopback.

Used by the supervisor (`groqpolicy up`) and by the tests; nothing here depends on a service
started by hand.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.kernel.config import environment
from bridge.kernel.errors import ToolchainError
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


@dataclass
class ManagedProcess:
    """A child process with its log file; stopping it never leaves it behind."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def spawn(name: str, argv: list[str], log_path: Path, env: dict | None = None) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    log.close()
    return ManagedProcess(name=name, proc=proc, log_path=log_path)


def start_nats(store_dir: Path, port: int | None = None, host: str = "127.0.0.1", extra_args: list[str] | None = None) -> ManagedProcess:
    """nats-server with JetStream on `store_dir`, listening on loopback."""
    port = port or free_port(host)
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(nats_server_binary()), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir), *(extra_args or [])]
    mp = spawn("nats-server", argv, store_dir / "nats-server.log")
    wait_for_port(port, host, proc=mp.proc)
    mp.extra.update(url=f"nats://{host}:{port}", port=port)
    return mp


def start_opa_agent(config_file: Path, workdir: Path, port: int | None = None, host: str = "127.0.0.1", extra_args: list[str] | None = None) -> ManagedProcess:
    """A real `opa run --server` agent configured from `config_file`, listening on loopback."""
    port = port or free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(opa_binary()), "run", "--server", "--addr", f"{host}:{port}",
        "--config-file", str(config_file), "--log-level", "debug", "--disable-telemetry",
        *(extra_args or []),
    ]
    mp = spawn("opa", argv, workdir / f"opa-{port}.log", env=environment())
    wait_for_port(port, host, proc=mp.proc)
    mp.extra.update(url=f"http://{host}:{port}", port=port)
    return mp
