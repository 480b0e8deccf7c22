"""Helpers for the bridge tests: a real emulator over HTTP, real workers and gateway (the `emu` and
`emu_module` fixtures that serve an `Emu` live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import groq
import httpx
import msgspec

from bridge.emulator import EmulatorConfig, GroqEmulator, create_app
from bridge.inference.catalog import default_catalog
from bridge.inference.connect import connect
from bridge.inference.gateway import create_app as create_gateway
from bridge.inference.serving import ThreadServer
from bridge.inference.worker import EngineSettings, GroqConnection, InferenceEngine, start_worker, stop_worker
from bridge.kernel.config import NatsSettings
from controlplane.infra.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
BRIDGE_TOKEN = "test-bridge-token-0000000000"  # what the test gateways require
BRIDGE_HEADERS = {"Authorization": f"Bearer {BRIDGE_TOKEN}"}


class Emu:
    """An emulator served over real HTTP in a thread; `app` is live (force faults, read stats)."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.app: GroqEmulator = create_app(config)
        self.server = ThreadServer(self.app)
        self.url = self.server.url

    def client(self, **kw) -> groq.AsyncGroq:
        kw.setdefault("max_retries", 0)
        return groq.AsyncGroq(base_url=self.url, api_key="test-key", **kw)

    def calls(self, model: str | None = None) -> int:
        return self.app.stats["total"] if model is None else self.app.stats["calls"][model]

    def stop(self) -> None:
        self.server.stop()


def fast_settings(**kw) -> EngineSettings:
    """Test settings: tiny backoff and breaker reset so resilience tests take milliseconds."""
    base = dict(retries_per_model=2, breaker_threshold=3, breaker_reset_s=0.3, backoff_base_s=0.005,
                backoff_max_s=0.02, max_retry_after_s=2.0, l1_size=1000)
    base.update(kw)
    return EngineSettings(**base)


def engine_for(emu: Emu, **kw) -> InferenceEngine:
    return InferenceEngine(emu.client(), default_catalog(), emulated=True, settings=fast_settings(**kw))


@asynccontextmanager
async def worker_on(nats_url: str, emu: Emu, settings: EngineSettings | None = None, l2: bool = True, **kw):
    conn = GroqConnection(client=emu.client(), emulated=True, base_url=emu.url)
    w, conn, nc = await start_worker(nats_url, groq_conn=conn, settings=settings or fast_settings(), l2=l2, **kw)
    try:
        yield w
    finally:
        await stop_worker(w, conn, nc)


@asynccontextmanager
async def gateway_on(nats_url: str, **kw):
    kw.setdefault("token", BRIDGE_TOKEN)
    srv = ThreadServer(create_gateway(nats_url, **kw))
    try:
        yield srv
    finally:
        srv.stop()


def spawn_worker(nats_url: str, emulator_url: str, log_path: Path, **env_extra: str) -> subprocess.Popen:
    """`python -m bridge.inference.worker` as a real child process (so a test can SIGKILL it)."""
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env.update(NATS_URL=nats_url, GROQPOLICY_EMULATOR_URL=emulator_url, PYTHONPATH=str(REPO_ROOT),
               GROQPOLICY_BREAKER_RESET_S="0.3", **env_extra)
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "bridge.inference.worker"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO_ROOT, start_new_session=True)
    log.close()
    return proc


async def wait_for_workers(nats_url: str, count: int, timeout: float = 20.0,
                           credential: NatsSettings | None = None) -> list[dict]:
    """Poll $SRV.PING.groqpolicy-inference until `count` workers answer. On an authenticated server
    pass the `ops` identity's credential (discovery is all it may do)."""
    nc = await connect(nats_url, role="ops", settings=credential or NatsSettings())
    try:
        deadline = time.monotonic() + timeout
        while True:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$SRV.PING.groqpolicy-inference", b"", reply=inbox)
            seen: list[dict] = []
            end = time.monotonic() + 0.3
            while time.monotonic() < end:
                try:
                    msg = await sub.next_msg(timeout=max(0.01, end - time.monotonic()))
                except Exception:  # noqa: BLE001 - nats TimeoutError: no more answers
                    break
                if msg.data:  # skip the server's no-responders status message
                    seen.append(msgspec.json.decode(msg.data))
            await sub.unsubscribe()
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"wanted {count} workers answering $SRV.PING, got {len(seen)}")
    finally:
        await nc.close()


async def post(client: httpx.AsyncClient, url: str, tier: str, body: dict) -> httpx.Response:
    return await client.post(f"{url}/v1/infer/{tier}", json=body, headers=BRIDGE_HEADERS)


@contextlib.contextmanager
def frozen(server: ManagedProcess) -> Iterator[None]:
    """nats-server stopped (SIGSTOP) for the block: every thread of it, before the block starts."""
    pid = server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while not all(_state(task) == "T" for task in Path(f"/proc/{pid}/task").iterdir()):
            assert time.monotonic() < deadline, "nats-server did not stop"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _state(task: Path) -> str:
    """A thread's state letter from /proc (T: stopped), after its parenthesised command name."""
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "T"  # gone
