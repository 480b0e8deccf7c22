"""Chaos under a bounded load: `groqpolicy up` answers evaluations over HTTP while each of its
children is killed with SIGKILL in turn (an inference worker, the gateway, NATS, the OPA agent, the
Groq emulator, the control plane itself), and, against a 3-node NATS cluster, while one node is killed.

What must hold, and how it is checked:

- nothing is lost: every evaluation answered 2xx is in the audit trail, read back through the API
  once the load stops, and the chain verifies;
- no refused connection at the control plane, ever: the supervisor holds the listening socket, so
  even while the control plane itself restarts a connection waits in the backlog. A refused
  connection is httpx's `ConnectError`; a connection closed or reset under a request
  (`RemoteProtocolError`, `ReadError`) is allowed only between the control plane's kill and its
  return (the requests its dying process had accepted);
- every other answer is 2xx, or a 503 that carries `Retry-After`;
- each fault is recovered from within `RECOVERY_S` (the supervisor reports the child running again
  and the component answers; for NATS, the control plane is connected again).

The measured times are printed (`pytest -s`); the README's "what survives what" table quotes them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import nats.errors
import nkeys
import pytest

from bridge.inference.connect import connect
from bridge.kernel.config import NatsSettings, Settings
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.auth.tokens import ensure_tokens
from controlplane.infra.processes import ManagedProcess, free_port, start_nats
from controlplane.infra.supervision import read_status
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RECOVERY_S = 30.0  # the stated bound: every fault below is recovered from within this
LOAD_THREADS = 3
LOAD_PAUSE_S = 0.1  # between two evaluations of one thread: a bounded load (~20 evaluations/s)
POLICY = """package chaos.pii

import data.groqpolicy.lib.groq

judgment := groq.judge("fast", "Does this text contain personal data?", {"text": input.text})

decision := {"decision": judgment.decision, "reasons": [sprintf("%s: %s", [judgment.decision, judgment.rationale])], "confidence": judgment.confidence}
"""
CONTEXT = {"principal": {"id": "svc-notes"}, "text": "call Ann on 555-1234"}


# -- the system under test --------------------------------------------------------------------------

@dataclass
class System:
    proc: subprocess.Popen
    state: Path
    log: Path
    cp: str
    agent: str
    gateway: str
    headers: dict[str, str] = field(default_factory=dict)

    def child(self, name: str) -> dict:
        status = read_status(self.state)
        assert status is not None, "the supervisor's status file is missing"
        return msgspec.structs.asdict(next(c for c in status.children if c.name == name))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_up(root: Path, **env_extra: str) -> System:
    ports = {k: free_port() for k in ("cp", "agent", "nats", "gateway")}
    root.mkdir(parents=True, exist_ok=True)
    state, log = root / "state", root / "up.log"
    env = {**{k: v for k, v in os.environ.items() if k not in ("GROQ_API_KEY", "GROQPOLICY_NATS_URL", "NATS_URL")},
           "GROQPOLICY_PORT": str(ports["cp"]), "GROQPOLICY_AGENT_PORT": str(ports["agent"]),
           "GROQPOLICY_NATS_PORT": str(ports["nats"]), "GROQPOLICY_GATEWAY_PORT": str(ports["gateway"]),
           "GROQPOLICY_PROCESSES": "1", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "controlplane.ops.cli", "up", "--state-dir", str(state)],
                            cwd=REPO_ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    system = System(proc, state, log, f"http://127.0.0.1:{ports['cp']}", f"http://127.0.0.1:{ports['agent']}",
                    f"http://127.0.0.1:{ports['gateway']}")
    deadline = time.monotonic() + 180
    while "Ctrl-C stops everything." not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            system.stop()
            raise AssertionError(f"groqpolicy up did not come up:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    admin = ensure_tokens(Settings(state_dir=state)).by_name("admin")
    system.headers = {"Authorization": f"Bearer {admin.secret}"}
    return system


def store_policy(system: System) -> None:
    body = {"name": "chaos-pii", "policy_type": "data_governance", "opa_policy": POLICY, "performance_tier": "fast",
            "constitutional_hash": CONSTITUTIONAL_HASH}
    r = httpx.post(f"{system.cp}/api/v1/policies", json=body, headers=system.headers, timeout=120)
    assert r.status_code == 201, r.text
    assert evaluate(system)["applicable_policies"], "the stored policy applies"


def evaluate(system: System, client: httpx.Client | None = None) -> dict:
    body = {"input_context": CONTEXT, "policy_types": ["data_governance"], "performance_tier": "fast",
            "constitutional_hash": CONSTITUTIONAL_HASH}
    r = (client or httpx).post(f"{system.cp}/api/v1/evaluate", json=body, headers=system.headers, timeout=30)
    r.raise_for_status()
    return r.json()


# -- the load -------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None = None
    error: str = ""  # "refused", "closed" or the exception's name
    evaluation_id: str = ""
    retry_after: str | None = None


class Load:
    """A few threads evaluating over HTTP, each with a pause: a few hundred evaluations in all."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(LOAD_THREADS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                self.outcomes.append(self._one(client))
                time.sleep(LOAD_PAUSE_S)

    def _one(self, client: httpx.Client) -> Outcome:
        out = Outcome(started=time.monotonic(), ended=0.0)
        try:
            r = client.post(f"{self.system.cp}/api/v1/evaluate", headers=self.system.headers, json={
                "input_context": CONTEXT, "policy_types": ["data_governance"], "performance_tier": "fast",
                "constitutional_hash": CONSTITUTIONAL_HASH})
            out.status, out.retry_after = r.status_code, r.headers.get("retry-after")
            if r.status_code < 300:
                out.evaluation_id = r.json()["evaluation_id"]
        except httpx.ConnectError:
            out.error = "refused"
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            out.error = "closed"
        except httpx.HTTPError as exc:
            out.error = type(exc).__name__
        out.ended = time.monotonic()
        return out

    def served_since(self, t: float) -> bool:
        return any(o.started >= t and o.status is not None and o.status < 300 for o in list(self.outcomes))


# -- faults ---------------------------------------------------------------------------------------------

@dataclass
class Fault:
    what: str
    killed_at: float
    recovered_at: float = 0.0

    @property
    def recovery_s(self) -> float:
        return self.recovered_at - self.killed_at


def _until(predicate: Callable[[], bool], what: str, timeout: float = RECOVERY_S + 30) -> float:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return time.monotonic()
        except (httpx.HTTPError, nats.errors.Error, TimeoutError, ValueError, KeyError, StopIteration, AssertionError):
            pass  # not back yet
        assert time.monotonic() < deadline, f"not recovered within {timeout:.0f}s: {what}"
        time.sleep(0.05)


def _answers(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def kill_child(system: System, load: Load, name: str, back: Callable[[], bool]) -> Fault:
    """SIGKILL the supervisor's child `name`; recovered once it runs again, `back()` holds and an
    evaluation started after the kill was answered 2xx."""
    old = system.child(name)["pid"]
    os.kill(old, signal.SIGKILL)
    fault = Fault(name, time.monotonic())

    def recovered() -> bool:
        now = system.child(name)
        return now["state"] == "running" and now["pid"] != old and back() and load.served_since(fault.killed_at)

    fault.recovered_at = _until(recovered, name)
    return fault


def cp_connected(system: System) -> bool:
    body = httpx.get(f"{system.cp}/health", timeout=5).json()
    return body["nats"] and body["status"] == "ok"


# -- what must hold afterwards --------------------------------------------------------------------------

def audited_ids(system: System, errors: list[str] | None = None) -> set[str]:
    """The evaluation ids in the audit trail; empty when a page could not be read (noted in `errors`):
    right after a NATS node's death the listing may answer 503 until the stream has its new leader."""
    ids: set[str] = set()
    after = 0
    while True:
        r = httpx.get(f"{system.cp}/api/v1/audit", params={"limit": 1000, "after_seq": after},
                      headers=system.headers, timeout=30)
        if r.status_code != 200:
            if errors is not None:
                errors.append(f"{r.status_code}: {r.text[:200]}")
            return set()
        page = r.json()
        ids.update(item["record"].get("evaluation_id", "") for item in page["records"])
        if page.get("next_after_seq") is None:
            return ids
        after = page["next_after_seq"]


def check_outcomes(system: System, load: Load, faults: list[Fault], cp_fault: Fault | None) -> None:
    outcomes = list(load.outcomes)
    answered = [o for o in outcomes if o.status is not None and o.status < 300]
    assert len(outcomes) >= 100 and len(answered) >= 0.9 * len(outcomes), (len(outcomes), len(answered))
    assert [o for o in outcomes if o.error == "refused"] == [], "a connection to the control plane was refused"
    for o in outcomes:
        if o.error:  # only requests the dying control plane had taken may see their connection close
            assert o.error == "closed" and cp_fault is not None, o
            assert cp_fault.killed_at - 1 <= o.ended <= cp_fault.recovered_at, (o, cp_fault)
        elif o.status is not None and o.status >= 300:
            assert o.status == 503 and o.retry_after, o
    wanted = {o.evaluation_id for o in answered}
    deadline = time.monotonic() + 60  # spooled records reach JetStream in the background
    errors: list[str] = []
    while (missing := wanted - audited_ids(system, errors)) and time.monotonic() < deadline:
        time.sleep(1)
    assert missing == set(), (f"{len(missing)} of {len(wanted)} answered evaluations are not in the audit trail "
                              f"(listing errors: {errors[-3:]})")
    verify = httpx.get(f"{system.cp}/api/v1/audit/verify", headers=system.headers, timeout=120).json()
    assert verify["ok"], verify
    print(f"\nchaos: {len(outcomes)} evaluations, {len(answered)} answered 2xx and all of them audited; "
          f"{sum(o.status == 503 for o in outcomes)} 503 with Retry-After; "
          f"{sum(o.error == 'closed' for o in outcomes)} closed by the control plane's own kill; 0 refused")
    for f in faults:
        print(f"  kill -9 {f.what:22} recovered in {f.recovery_s:5.1f}s")
        assert f.recovery_s < RECOVERY_S, f


# -- the tests --------------------------------------------------------------------------------------------

def test_every_child_killed_in_turn_under_load_loses_nothing(tmp_path):
    system = start_up(tmp_path)
    try:
        store_policy(system)
        faults: list[Fault] = []
        with Load(system) as load:
            time.sleep(2)
            faults.append(kill_child(system, load, "inference worker 1", lambda: True))
            faults.append(kill_child(system, load, "bridge gateway", lambda: _answers(f"{system.gateway}/health")))
            faults.append(kill_child(system, load, "nats-server", lambda: cp_connected(system)))
            faults.append(kill_child(system, load, "OPA agent", lambda: _answers(f"{system.agent}/health?bundles")))
            faults.append(kill_child(system, load, "Groq emulator", lambda: True))
            faults.append(kill_child(system, load, "control plane", lambda: cp_connected(system)))
            time.sleep(2)
        check_outcomes(system, load, faults, cp_fault=faults[-1])
        restarts = {c.name: c.restarts for c in read_status(system.state).children}
        assert restarts == {"nats-server": 1, "Groq emulator": 1, "inference worker 1": 1, "inference worker 2": 0,
                            "bridge gateway": 1, "control plane": 1, "OPA agent": 1}
        assert system.log.read_text().count("is back (pid") == 6
    finally:
        system.stop()


# -- a cluster someone else runs ----------------------------------------------------------------------------

NODES = ("n1", "n2", "n3")


def start_cluster(root: Path, user_public_key: str) -> dict[str, ManagedProcess]:
    """Three clustered nats-servers with JetStream admitting one nkey user (the cluster's admin's
    choice: every groqpolicy process presents the same credential)."""
    conf = root / "cluster.conf"
    conf.write_text(f'accounts {{ GROQPOLICY {{ jetstream: enabled, users: [ {{ nkey: "{user_public_key}" }} ] }} }}\n')
    client_ports, route_ports = [free_port() for _ in NODES], [free_port() for _ in NODES]
    servers = {}
    for i, name in enumerate(NODES):
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i)
        servers[name] = start_nats(root / name, port=client_ports[i], extra_args=[
            "-c", str(conf), "--server_name", name, "--cluster_name", "chaos",
            "--cluster", f"nats://127.0.0.1:{route_ports[i]}", "--routes", routes])
    return servers


def nkey_cluster(root: Path) -> tuple[dict[str, ManagedProcess], str, Path, NatsSettings]:
    """`start_cluster` for a fresh nkey user: the servers, the URL naming all three, the user's seed
    file (0600) and the credential an ops client connects with."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    seed_file = root / "groqpolicy.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    servers = start_cluster(root, nkeys.from_seed(bytearray(seed)).public_key.decode())
    url = ",".join(s.extra["url"] for s in servers.values())
    return servers, url, seed_file, NatsSettings(nkey_file=seed_file, connect_timeout_s=5)


def stream_leader(url: str, credential: NatsSettings) -> str:
    """The node that leads the audit stream now ("" while there is none)."""

    async def ask() -> str:
        nc = await connect(url, role="ops", settings=credential)
        try:
            info = await nc.jetstream(timeout=2).stream_info("GROQPOLICY_AUDIT")
            return info.cluster.leader if info.cluster and info.cluster.leader else ""
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_one_node_of_a_three_node_cluster_killed_under_load_loses_nothing(tmp_path):
    servers, url, seed_file, credential = nkey_cluster(tmp_path)
    system = None
    try:
        system = start_up(tmp_path / "up", GROQPOLICY_NATS_URL=url, GROQPOLICY_NATS_NKEY=str(seed_file),
                          GROQPOLICY_NATS_REPLICAS="3")
        store_policy(system)
        with Load(system) as load:
            time.sleep(2)
            leader = stream_leader(url, credential)
            servers[leader].kill()
            fault = Fault(f"NATS node {leader} (leader)", time.monotonic())
            fault.recovered_at = _until(lambda: stream_leader(url, credential) not in ("", leader)
                                        and cp_connected(system) and load.served_since(fault.killed_at), fault.what)
            time.sleep(3)
        check_outcomes(system, load, [fault], cp_fault=None)
        assert {c.name: c.restarts for c in read_status(system.state).children}.get("control plane") == 0
    finally:
        if system is not None:
            system.stop()
        for s in servers.values():
            s.stop()
