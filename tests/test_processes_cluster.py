"""Several control-plane processes (`GROQPOLICY_PROCESSES=3` under `groqpolicy up`) on a 3-node NATS
cluster on this machine, as they would run on three machines: every process is a replica sharing
the cluster's JetStream state. Under load, one cluster node (the audit stream's leader) and one
control-plane process are killed; evaluations keep being answered, every answered one is in the
audit trail, the chain written by all processes at once verifies, and every process serves the
same bundle revision, before and after a policy write made through one of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from controlplane.infra.supervision import read_status
from tests.controlplane_helpers import connections_at_once, health_of_every_process
from tests.test_chaos import (
    CONTEXT,
    Fault,
    Load,
    System,
    _until,
    check_outcomes,
    cp_connected,
    nkey_cluster,
    start_up,
    store_policy,
    stream_leader,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

PROCESSES = 3


def _established(pid: int, port: int) -> int:
    """How many connections to `port` process `pid` holds (its socket inodes among /proc/net/tcp's)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "01" and int(r[1].rsplit(":", 1)[1], 16) == port and r[9] in inodes)


def spread_evenly(system: System, per_process: int = 3, attempts: int = 5) -> None:
    """Connections opened at once land on the processes that hold the fewest
    (controlplane.infra.listener): with ours open, no process holds two more than another (the OPA
    agent's own connections count too). A process busy for longer than DEFER_S (its start-up work,
    a compile) leaves a connection to another, so this holds once they are idle: a few attempts."""
    port = int(system.cp.rsplit(":", 1)[1])
    pids = [system.child(name)["pid"] for name in ("control plane", *(f"control plane {n}" for n in range(2, PROCESSES + 1)))]
    seen = []
    for _ in range(attempts):
        conns = connections_at_once(system.cp, per_process * PROCESSES)
        try:
            for c in conns:  # each answered: every connection is accepted by now
                c.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert c.recv(12) == b"HTTP/1.1 200"
            held = {pid: _established(pid, port) for pid in pids}
        finally:
            for c in conns:
                c.close()
        seen.append(held)
        if sum(held.values()) >= len(conns) and max(held.values()) - min(held.values()) <= 2:
            return
        time.sleep(1)
    raise AssertionError(f"connections per process, {attempts} attempts: {seen}")


def same_revision_everywhere(system: System) -> list[str]:
    seen = [h["bundles"] for h in health_of_every_process(system.cp, PROCESSES).values()]
    assert len({tuple(b) for b in seen}) == 1, seen
    return seen[0]


def burst(system: System, count: int = 300, threads: int = 12) -> None:
    """Evaluations from several connections at once, so that every process appends to the chain."""
    body = {"input_context": CONTEXT, "policy_types": ["security_policies"], "constitutional_hash": _hash()}

    def one(_: int) -> int:
        return httpx.post(f"{system.cp}/api/v1/evaluate", json=body, headers=system.headers, timeout=30).status_code

    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(one, range(count)))
    assert codes == [200] * count, {c: codes.count(c) for c in set(codes)}


def _hash() -> str:
    from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH

    return CONSTITUTIONAL_HASH


def test_processes_on_a_three_node_cluster_lose_a_node_and_a_process(tmp_path):
    servers, url, seed_file, credential = nkey_cluster(tmp_path)
    system = None
    try:
        system = start_up(tmp_path / "up", GROQPOLICY_NATS_URL=url, GROQPOLICY_NATS_NKEY=str(seed_file),
                          GROQPOLICY_NATS_REPLICAS="3", GROQPOLICY_PROCESSES=str(PROCESSES))
        before = same_revision_everywhere(system)
        spread_evenly(system)
        store_policy(system)  # through whichever process took the connection; the others follow the bucket
        _until(lambda: same_revision_everywhere(system) != before, "every process on the new revision")
        burst(system)
        with Load(system) as load:
            time.sleep(2)
            leader = stream_leader(url, credential)
            servers[leader].kill()
            node = Fault(f"NATS node {leader} (leader)", time.monotonic())
            victim = system.child("control plane 2")["pid"]
            os.kill(victim, signal.SIGKILL)
            process = Fault("control plane 2", time.monotonic())
            node.recovered_at = _until(lambda: stream_leader(url, credential) not in ("", leader)
                                       and load.served_since(node.killed_at), node.what)
            process.recovered_at = _until(lambda: system.child("control plane 2")["state"] == "running"
                                          and system.child("control plane 2")["pid"] != victim
                                          and cp_connected(system), process.what)
            time.sleep(3)
        # a request the killed process had accepted may see its connection closed: the process
        # fault stands in for the control plane's own in the chaos test's rules
        check_outcomes(system, load, [node, process], cp_fault=process)
        same_revision_everywhere(system)  # the restarted process built the same revision again
        spread_evenly(system)  # the restarted process takes its share again
        restarts = {c.name: c.restarts for c in read_status(system.state).children}
        # the killed process may need a second start: one that begins while the cluster elects a new
        # leader can fail its start-up (the supervisor starts it again); the others never restart
        assert restarts["control plane 2"] >= 1 and restarts["control plane"] == 0 and restarts["control plane 3"] == 0
    finally:
        if system is not None:
            system.stop()
        for s in servers.values():
            s.stop()
