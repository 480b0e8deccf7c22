"""`policy.evaluate` on NATS answers like `/api/v1/evaluate`; two control-plane replicas on one NATS
share the policy store and hot-swap each other's writes into their in-process evaluators."""

from __future__ import annotations

import logging
import time

import httpx
import msgspec
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.evaluation.schemas import EVALUATE_SUBJECT
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane

H = CONSTITUTIONAL_HASH
LIMIT = """package limits

import data.groqpolicy.lib.decision as doc

deny_reasons contains "amount above LIMIT" if input.amount > LIMIT

decision := doc.document("limits", deny_reasons, set(), {"amount within limit"}, 1, [])
"""


def limit(n: int) -> str:
    return LIMIT.replace("LIMIT", str(n))


def wait_until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def replicas(tmp_path, nats_server):
    url = nats_server.extra["url"]
    key = tmp_path / "record-key.pem"  # replicas share the record key that signs policies
    token = tmp_path / "bridge-token"  # and the bridge token every bundle carries (the same revision on both)
    a = make_settings(tmp_path / "a", compile_on_start=True, nats_url=url, record_key_file=key, bridge_token_file=token)
    b = make_settings(tmp_path / "b", compile_on_start=True, nats_url=url, record_key_file=key, bridge_token_file=token)
    with running_control_plane(a) as sa, running_control_plane(b) as sb:
        with httpx.Client(base_url=a.base_url, headers=ADMIN_HEADERS, timeout=30) as ca, httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=30) as cb:
            yield (ca, sa), (cb, sb), url


def _decide(client, amount: int) -> dict:
    r = client.post("/api/v1/evaluate", json={"input_context": {"principal": "p", "amount": amount},
                                              "policy_types": ["risk_management"], "constitutional_hash": H})
    assert r.status_code == 200, r.text
    return r.json()


async def test_replicas_share_the_store_and_hot_swap(replicas):
    (ca, sa), (cb, sb), _ = replicas
    created = ca.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management", "opa_policy": limit(100),
                                                "constitutional_hash": H}).json()
    rule_id = created["rule_id"]
    # a read on B straight away comes from the KV (fresh) and does not swallow the watch's update
    assert cb.get(f"/api/v1/policies/{rule_id}").json()["name"] == "limits"
    # replica B sees the write through its KV watch, builds the same revision and loads it
    wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"])
    assert [p["rule_id"] for p in cb.get("/api/v1/policies").json()] == [rule_id]
    assert _decide(cb, 500)["decision"] == "deny" and _decide(cb, 50)["decision"] == "allow"
    assert sb.store.get("groqpolicy", "rego")[0].revision == created["bundle_revision"]  # agents of B get it too

    # a change made on B reaches A
    r = cb.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": H, "opa_policy": limit(10)})
    assert r.status_code == 200
    wait_until(lambda: _decide(ca, 50)["decision"] == "deny")
    assert sa.runtime.evaluator.revision == sb.runtime.evaluator.revision

    # a delete on A empties B
    assert ca.delete(f"/api/v1/policies/{rule_id}").status_code == 200
    wait_until(lambda: _decide(cb, 50)["applicable_policies"] == [])
    assert cb.get(f"/api/v1/policies/{rule_id}").status_code == 404


async def test_policy_evaluate_over_nats_matches_the_http_api(replicas):
    (ca, _), (_, sb), url = replicas
    created = ca.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management", "opa_policy": limit(100),
                                                "constitutional_hash": H}).json()
    # both replicas serve policy.evaluate (one queue group): wait until both have the policy
    wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"])
    body = {"input_context": {"principal": "p", "amount": 500}, "policy_types": ["risk_management"],
            "constitutional_hash": H, "require_explanation": True}
    http = ca.post("/api/v1/evaluate", json=body).json()
    nc = await nats.connect(url)
    try:
        msg = await nc.request(EVALUATE_SUBJECT, msgspec.json.encode(body), timeout=10)
        assert not msg.headers or "Nats-Service-Error-Code" not in msg.headers
        out = msgspec.json.decode(msg.data)
        assert set(out) == set(http)
        for key in ("decision", "confidence_score", "applicable_policies", "constitutional_compliance", "reasons",
                    "explanation", "bundle_revision", "constitutional_hash"):
            assert out[key] == http[key], key
        assert out["decision"] == "deny"

        bad = await nc.request(EVALUATE_SUBJECT, msgspec.json.encode({**body, "constitutional_hash": "x"}), timeout=10)
        assert bad.headers["Nats-Service-Error-Code"] == "422"
        assert msgspec.json.decode(bad.data) == {"error": {"type": "ConstitutionalHashMismatch",
                                                           "message": f"constitutional_hash: unknown constitution (want: {H}, got: 'x')",
                                                           "code": "constitutional_hash_mismatch"}}
        broken = await nc.request(EVALUATE_SUBJECT, b"{nope", timeout=10)
        assert broken.headers["Nats-Service-Error-Code"] == "400"
        assert msgspec.json.decode(broken.data)["error"]["message"].startswith("request: not JSON")
        invalid = await nc.request(EVALUATE_SUBJECT, b'{"input_context": 1}', timeout=10)
        assert invalid.headers["Nats-Service-Error-Code"] == "400"
        assert msgspec.json.decode(invalid.data)["error"]["message"] == "request: Expected `object`, got `int` - at `$.input_context`"

        # one request type on the subject: the retired entrypoint form is a client error
        entry = await nc.request(EVALUATE_SUBJECT, msgspec.json.encode(
            {"entrypoint": "groqpolicy/constitution/pre_validation", "input": {"constitutional_hash": H}}), timeout=10)
        assert entry.headers["Nats-Service-Error-Code"] == "400"
        assert msgspec.json.decode(entry.data)["error"] == {"type": "BadRequest",
                                                            "message": "request: Object contains unknown field `entrypoint`"}

        # discoverable as a nats.micro service
        ping = await nc.request("$SRV.PING.groqpolicy-policy", b"", timeout=5)
        assert msgspec.json.decode(ping.data)["name"] == "groqpolicy-policy"

        # $SRV.STATS counts what the answering tasks did (both replicas answer; the queue group split the 5)
        stats = await _stats_of_every_replica(nc, "groqpolicy-policy", replicas=2)
        data = [s["endpoints"][0]["data"] for s in stats]
        assert sum(d["answered"] for d in data) == 5 and sum(d["errors"] for d in data) == 4
        assert all(d["processing_time_ns"] > 0 and d["average_processing_time_ns"] > 0 for d in data if d["answered"])
        assert {d["last_error"] for d in data if d["errors"]} <= {
            "400 BadRequest: request: Object contains unknown field `entrypoint`",
            "400 BadRequest: request: Expected `object`, got `int` - at `$.input_context`",
            "400 BadRequest: request: not JSON (JSON is malformed: object keys must be strings (byte 1))",
            f"422 ConstitutionalHashMismatch: constitutional_hash: unknown constitution (want: {H}, got: 'x')"}
    finally:
        await nc.close()


async def _stats_of_every_replica(nc, service: str, replicas: int) -> list[dict]:
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=replicas)
    await nc.publish(f"$SRV.STATS.{service}", b"", reply=inbox)
    try:
        return [msgspec.json.decode((await sub.next_msg(timeout=5)).data) for _ in range(replicas)]
    finally:
        await sub.unsubscribe()


def test_a_replica_follows_writes_made_after_a_nats_restart(tmp_path, caplog):
    """B sees a write made after NATS came back because its watch is rebuilt on reconnect (the log
    line says so); the bounds are generous, as a loaded machine may take long to get there."""
    store_log = logging.getLogger("controlplane.policies.store")
    store_log.addHandler(caplog.handler)  # on the logger itself: the app's logging config replaces the root's handlers
    caplog.set_level(logging.INFO, logger=store_log.name)
    from controlplane.infra.processes import free_port, start_nats

    port = free_port()
    server = start_nats(tmp_path / "nats", port=port)
    url = server.extra["url"]
    key = tmp_path / "record-key.pem"  # replicas share the record key that signs policies
    token = tmp_path / "bridge-token"  # and the bridge token every bundle carries (the same revision on both)
    a = make_settings(tmp_path / "a", compile_on_start=True, nats_url=url, record_key_file=key, bridge_token_file=token)
    b = make_settings(tmp_path / "b", compile_on_start=True, nats_url=url, record_key_file=key, bridge_token_file=token)
    try:
        with running_control_plane(a), running_control_plane(b) as sb:
            with httpx.Client(base_url=a.base_url, headers=ADMIN_HEADERS, timeout=30) as ca:
                server.stop()  # same port, same store: streams and KV survive, consumers do not
                server = start_nats(tmp_path / "nats", port=port)
                wait_until(lambda: sb.nats.nc is not None and sb.nats.nc.is_connected, timeout=30)
                deadline = time.monotonic() + 30  # JetStream may need a moment after the restart
                while (r := ca.post("/api/v1/policies", json={"name": "after restart", "policy_type": "risk_management",
                                                              "opa_policy": limit(5), "constitutional_hash": H})
                       ).status_code == 503 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert r.status_code == 201, r.text
                wait_until(lambda: sb.runtime.evaluator.revision == r.json()["bundle_revision"], timeout=30)
                # by the rebuilt watch, not by nats-py's own consumer recovery (which a wait this long allows)
                wait_until(lambda: any("watch restarted after a reconnect" in m for m in caplog.messages), timeout=30)
                assert [p.name for p in sb.policies.store.records()] == ["after restart"]
    finally:
        store_log.removeHandler(caplog.handler)
        server.stop()


def test_a_read_racing_ahead_of_the_watch_does_not_swallow_the_update(replicas):
    import asyncio

    (ca, _), (cb, sb), _ = replicas
    store = sb.policies.store

    def on_b(coro):
        return asyncio.run_coroutine_threadsafe(coro, sb.runtime.loop).result(30)

    on_b(store._stop_watch())  # hold B's watch back
    created = ca.post("/api/v1/policies", json={"name": "raced", "policy_type": "risk_management", "opa_policy": limit(7),
                                                "constitutional_hash": H}).json()
    assert cb.get(f"/api/v1/policies/{created['rule_id']}").json()["name"] == "raced"  # read from the KV on B
    on_b(store.resync())  # the watch replays: B must still rebuild its bundle for the new policy
    wait_until(lambda: sb.runtime.evaluator.revision == created["bundle_revision"], timeout=10)
    assert _decide(cb, 50)["decision"] == "deny"
