"""Scale-out: three clustered nats-servers, the audit stream and the policy KV/object store with three
replicas; the stream leader (which one writer is connected to) is killed while two control-plane
writers append audit records and write policies. Nothing acknowledged is lost, the chain verifies,
and no request fails beyond one client retry."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.errors import APIError, ServiceUnavailableError

from bridge.kernel.errors import GroqPolicyError
from controlplane.audit import AuditRecord, AuditTrail, StoredRecord
from controlplane.audit.trail import AuditError
from controlplane.infra.processes import ManagedProcess, free_port, start_nats
from controlplane.infra.recordkeys import RecordKeys
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.store import BUCKET, PolicyStore

pytestmark = pytest.mark.slow

NAMES = ("n1", "n2", "n3")
KEYS = RecordKeys.generate()  # the record key the control-plane replicas share


def start_cluster(root: Path) -> dict[str, ManagedProcess]:
    client_ports = [free_port() for _ in NAMES]
    route_ports = [free_port() for _ in NAMES]
    servers = {}
    for i, name in enumerate(NAMES):
        routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i)
        servers[name] = start_nats(root / name, port=client_ports[i], extra_args=[
            "--server_name", name, "--cluster_name", "groqpolicy-test",
            "--cluster", f"nats://127.0.0.1:{route_ports[i]}", "--routes", routes,
        ])
    return servers


async def wait_for_jetstream(nc, timeout: float = 30) -> None:
    """A clustered JetStream answers once its meta group has elected a leader."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.jetstream(timeout=2).account_info()
            return
        except (APIError, ServiceUnavailableError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def connect(urls: list[str]):
    return await nats.connect(servers=urls, dont_randomize=True, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.1, connect_timeout=2)


def policy(i: int) -> PolicyRecord:
    return PolicyRecord(rule_id=uuid.uuid4(), name=f"p{i}", policy_type="security_policies",
                        opa_policy="package x\n", performance_tier="fast")


async def run_scenario(servers: dict[str, ManagedProcess]) -> None:
    urls = {name: s.extra["url"] for name, s in servers.items()}
    boot = await connect(list(urls.values()))
    await wait_for_jetstream(boot)
    setup = AuditTrail(boot, keys=KEYS, replicas=3, timeout=2)
    await setup.ensure_stream()
    leader = (await boot.jetstream().stream_info(setup.stream)).cluster.leader
    others = [n for n in NAMES if n != leader]
    await boot.close()

    # writer A sits on the stream leader (the server we kill); writer B on another server
    nc_a = await connect([urls[leader]] + [urls[n] for n in others])
    nc_b = await connect([urls[others[0]], urls[others[1]], urls[leader]])
    trails = [AuditTrail(nc_a, keys=KEYS, replicas=3, timeout=2, append_deadline=20), AuditTrail(nc_b, keys=KEYS, replicas=3, timeout=2, append_deadline=20)]
    store = PolicyStore(lambda: nc_a.jetstream(timeout=2), replicas=3, keys=KEYS)
    await asyncio.wait_for(store.open(), 30)

    acked: list[StoredRecord] = []
    retried = {"audit": 0, "policy": 0}
    failures: list[str] = []
    policies: dict[uuid.UUID, int] = {}  # rule_id -> last acknowledged version
    stop = asyncio.Event()
    notes: list[str] = []
    t_start = time.monotonic()

    async def audit_writer(trail: AuditTrail, name: str) -> None:
        i = 0
        while not stop.is_set():
            record = AuditRecord(source="api", decision="allow", evaluation_id=f"{name}-{i}")
            for attempt in (1, 2):  # the client's one retry, with the same record (same id)
                try:
                    acked.append(await trail.append(record))
                    break
                except AuditError as exc:
                    if attempt == 2:
                        failures.append(f"audit {record.evaluation_id}: {exc}")
                    retried["audit"] += 1
                    notes.append(f"{time.monotonic() - t_start:.1f}s audit {exc}")
            i += 1

    async def kv_ready(limit: float = 20.0) -> None:
        """The policy bucket answers once its stream has elected a new leader."""
        until = time.monotonic() + limit
        while time.monotonic() < until:
            try:
                info = await nc_b.jetstream(timeout=1).stream_info(f"KV_{BUCKET}")
                if info.cluster and info.cluster.leader:
                    return
            except (TimeoutError, APIError, nats.errors.Error):
                pass
            await asyncio.sleep(0.25)

    async def policy_writer() -> None:
        i = 0
        while not stop.is_set():
            rec = policy(i)
            for attempt in (1, 2):
                try:
                    await asyncio.wait_for(store.create(rec), 10)
                    policies[rec.rule_id] = 1
                    break
                except (TimeoutError, GroqPolicyError, APIError, nats.errors.Error) as exc:  # StoreConflict/StoreUnavailable
                    # a lost ack may hide a stored write: the retry reads before writing again
                    try:
                        got = await asyncio.wait_for(store.get(rec.rule_id), 10)
                    except (TimeoutError, GroqPolicyError, APIError, nats.errors.Error):
                        got = None
                    if got is not None:
                        policies[rec.rule_id] = got[0].version
                        break
                    if attempt == 2:
                        failures.append(f"policy {rec.rule_id}: {exc!r}")
                    retried["policy"] += 1
                    notes.append(f"{time.monotonic() - t_start:.1f}s policy {exc!r}")
                    await kv_ready()  # what a client does on 503: wait until the service is back, retry once
            i += 1

    tasks = [asyncio.create_task(audit_writer(t, f"{w}{k}")) for w, t in zip("ab", trails, strict=True) for k in range(4)]
    tasks.append(asyncio.create_task(policy_writer()))
    await asyncio.sleep(1.0)
    before_kill, policies_before_kill = len(acked), len(policies)
    servers[leader].kill()
    killed_at = time.monotonic()
    notes.append(f"{killed_at - t_start:.1f}s killed {leader}")
    # keep writing until the survivors have acknowledged plenty more (bounded)
    while (len(acked) < before_kill + 200 or len(policies) < policies_before_kill + 20) and time.monotonic() - killed_at < 30:
        await asyncio.sleep(0.05)
    recovered_s = time.monotonic() - killed_at
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    print("\n".join(notes))
    assert failures == [], failures[:5]
    assert before_kill > 50 and len(acked) >= before_kill + 200, (before_kill, len(acked), recovered_s)
    assert nc_a.stats["reconnects"] >= 1  # writer A really lost its server and moved on
    info = await nc_b.jetstream().stream_info(trails[0].stream)
    assert info.cluster.leader in others  # a new leader took over

    # nothing acknowledged is lost: each acked record is in the stream, at its sequence, unchanged
    stored = {}
    after = 0
    while True:
        page = await trails[1].list(limit=1000, after_seq=after)
        stored.update({s.seq: s for s in page.records})
        if page.next_after_seq is None:
            break
        after = page.next_after_seq
    for a in acked:
        assert stored[a.seq].record.hash == a.record.hash, a.seq
    # and nothing is stored twice or without an ack (retries reuse the record id)
    assert len(stored) == len(acked) == len({a.record.record_id for a in acked})
    report = await trails[1].verify()
    assert report.ok and report.checked == len(acked), report

    # every acknowledged policy write is readable from the surviving servers
    reader = PolicyStore(lambda: nc_b.jetstream(timeout=5), replicas=3, keys=KEYS)
    deadline = time.monotonic() + 30
    while True:  # a client retries while the KV stream elects its new leader (slow on a loaded machine)
        try:
            await reader.open()
            break
        except nats.errors.TimeoutError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    assert len(policies) > policies_before_kill + 10  # policy writes went on after the kill too
    for rule_id, version in policies.items():
        got = await reader.get(rule_id)
        assert got is not None and got[0].version == version, rule_id
    await reader.close()
    await store.close()
    print(f"\ncluster failover: killed stream leader {leader} after {before_kill} records; 200 more (and 20 policies) within {recovered_s:.1f}s; "
          f"{len(acked)} audit records acknowledged and verified, {len(policies)} policies stored; "
          f"retries: {retried}; relinks after races: {trails[0].conflicts + trails[1].conflicts}")
    for nc in (nc_a, nc_b):
        try:
            await nc.close()
        except ConnectionError:
            pass


def test_killing_the_stream_leader_loses_nothing(tmp_path):
    servers = start_cluster(tmp_path)
    started = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run_scenario(servers), 90))
    finally:
        for s in servers.values():
            s.stop()
    assert time.monotonic() - started < 60
