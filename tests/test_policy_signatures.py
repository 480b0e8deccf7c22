"""Signed policy records through the real control plane and a real nats-server.

The attacker holds write access to the policy bucket (nats-py), not the control plane's record key.
Whatever it writes (an unsigned record, a forged or foreign signature, an older signed version put
back, an unsigned delete) is never compiled or served: evaluations keep using the trusted version,
`/health` names the policy and why, and a replica that reads the bucket refuses it too."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import Callable

import httpx
import msgspec
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.recordkeys import RecordKeys
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.signed import seal_record
from controlplane.policies.store import BUCKET, key_for
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane

H = CONSTITUTIONAL_HASH
LIMIT = """package limits

import data.groqpolicy.lib.decision as doc

deny_reasons contains "amount above LIMIT" if input.amount > LIMIT

decision := doc.document("limits", deny_reasons, set(), {"amount within limit"}, 1, [])
"""
ALLOW_ALL = """package limits

import data.groqpolicy.lib.decision as doc

decision := doc.document("limits", set(), set(), {"anything goes"}, 1, [])
"""


def limit(n: int) -> str:
    return LIMIT.replace("LIMIT", str(n))


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def system(tmp_path_factory, nats_server_module):
    tmp = tmp_path_factory.mktemp("signed")
    url = nats_server_module.extra["url"]
    # the replicas of one deployment share one record key (controlplane.infra.recordkeys)
    settings = make_settings(tmp / "a", compile_on_start=True, nats_url=url, record_key_file=tmp / "record-key.pem")
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        yield client, services, url, tmp


def decide(client: httpx.Client, amount: int, rule_id: str) -> str:
    r = client.post("/api/v1/evaluate", json={"input_context": {"principal": "p", "amount": amount},
                                              "policy_types": ["risk_management"], "constitutional_hash": H})
    assert r.status_code == 200, r.text
    body = r.json()
    assert rule_id in body["applicable_policies"], body
    return body["decision"]


def create(client: httpx.Client, name: str, text: str = LIMIT.replace("LIMIT", "100")) -> str:
    r = client.post("/api/v1/policies", json={"name": name, "policy_type": "risk_management", "opa_policy": text,
                                              "performance_tier": "fast", "constitutional_hash": H})
    assert r.status_code == 201, r.text
    return r.json()["rule_id"]


def refusal(client: httpx.Client, rule_id: str) -> str:
    health = client.get("/health").json()
    found = [e for e in health["errors"] if rule_id in e]
    if found:
        assert health["status"] == "degraded"
    return found[0] if found else ""


def kv_write(url: str, action: Callable[..., object]) -> object:
    """Run `action(kv)` against the policy bucket as an identity that may write it."""
    async def run() -> object:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            return await action(kv)  # type: ignore[misc]
        finally:
            await nc.close()

    return asyncio.run(run())


def tampered(stored: bytes, **changes: object) -> dict:
    fields = msgspec.json.decode(stored)
    fields.update(changes)
    return fields


async def latest(kv, rule_id: str) -> bytes:
    return (await kv.get(key_for(uuid.UUID(rule_id)))).value


@pytest.mark.parametrize("how", ["unsigned", "forged", "unknown key"])
def test_a_policy_rewritten_in_kv_without_the_key_is_never_served(system, how):
    client, services, url, _ = system
    rule_id = create(client, f"limits-{how}")
    revision = services.runtime.evaluator.revision
    assert decide(client, 500, rule_id) == "deny"

    async def rewrite(kv) -> None:
        key = key_for(uuid.UUID(rule_id))
        fields = tampered(await latest(kv, rule_id), opa_policy=ALLOW_ALL, version=2)
        if how == "unsigned":
            fields.pop("signature")
        elif how == "forged":  # the control plane's key id, a signature it never made
            fields["signature"]["sig"] = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
        else:  # a correct signature by a key of the attacker's own
            fields.pop("signature")
            record = msgspec.convert(fields, PolicyRecord)
            await kv.put(key, seal_record(key, record, RecordKeys.generate()))
            return
        await kv.put(key, msgspec.json.encode(fields))

    kv_write(url, rewrite)
    wait_until(lambda: bool(refusal(client, rule_id)))
    message = refusal(client, rule_id)
    assert message.startswith(f"policy {rule_id} (KV revision ") and f"refused, {how}: " in message
    assert message.endswith("; version 1 keeps serving")
    assert decide(client, 500, rule_id) == "deny"  # the trusted version decides
    assert services.runtime.evaluator.revision == revision  # nothing was compiled for it
    got = client.get(f"/api/v1/policies/{rule_id}").json()
    assert (got["opa_policy"], got["version"]) == (limit(100), 1)
    assert [v["version"] for v in client.get(f"/api/v1/policies/{rule_id}/versions").json()] == [1]
    # the API writes over the refused value with a signed one
    r = client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": H, "opa_policy": limit(10)})
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    wait_until(lambda: not refusal(client, rule_id))
    assert decide(client, 50, rule_id) == "deny"


def test_a_policy_added_to_kv_without_the_key_is_never_served(system):
    client, services, url, _ = system
    template = create(client, "template")
    rule_id = str(uuid.uuid4())

    async def add(kv) -> None:
        fields = tampered(await latest(kv, template), rule_id=rule_id, name="backdoor", opa_policy=ALLOW_ALL)
        fields.pop("signature")
        await kv.put(key_for(uuid.UUID(rule_id)), msgspec.json.encode(fields))

    kv_write(url, add)
    wait_until(lambda: bool(refusal(client, rule_id)))
    assert "refused, unsigned: it carries no signature" in refusal(client, rule_id)
    assert rule_id not in {p["rule_id"] for p in client.get("/api/v1/policies").json()}
    assert client.get(f"/api/v1/policies/{rule_id}").status_code == 404
    assert rule_id not in {str(r.rule_id) for r in services.policies.active_records()}
    r = client.post("/api/v1/opa/evaluate", json={"policy_id": rule_id, "input_data": {"amount": 1}})
    assert r.status_code == 404, r.text
    # an operator removes it with their own bucket access: nothing trusted is lost, the report clears
    kv_write(url, lambda kv: kv.delete(key_for(uuid.UUID(rule_id))))
    wait_until(lambda: not refusal(client, rule_id))


def test_an_unsigned_delete_keeps_the_policy_serving(system):
    client, _, url, _ = system
    rule_id = create(client, "delete-me-not")
    kv_write(url, lambda kv: kv.delete(key_for(uuid.UUID(rule_id))))
    wait_until(lambda: bool(refusal(client, rule_id)))
    assert "refused, unsigned: the delete marker carries no signature; version 1 keeps serving" in refusal(client, rule_id)
    assert decide(client, 500, rule_id) == "deny"
    assert client.get(f"/api/v1/policies/{rule_id}").json()["version"] == 1
    # a delete through the API is signed: it goes through, on this replica and in the bucket
    assert client.delete(f"/api/v1/policies/{rule_id}", params={"constitutional_hash": H}).status_code == 200
    assert not refusal(client, rule_id)
    assert client.get(f"/api/v1/policies/{rule_id}").status_code == 404


def test_an_older_signed_version_put_back_is_refused(system):
    client, _, url, _ = system
    rule_id = create(client, "no-rollback")
    # kept before the update rather than read back with nats-py's `KeyValue.history`, whose watch can
    # report "no keys" on a busy host (controlplane.policies.store.history says why)
    signed_v1 = kv_write(url, lambda kv: latest(kv, rule_id))
    assert client.put(f"/api/v1/policies/{rule_id}", json={"constitutional_hash": H, "opa_policy": limit(10)}).status_code == 200

    async def roll_back(kv) -> None:
        await kv.put(key_for(uuid.UUID(rule_id)), signed_v1)  # version 1, signed by the control plane

    kv_write(url, roll_back)
    wait_until(lambda: bool(refusal(client, rule_id)))
    assert "refused, replayed: version 1 put back over version 2; version 2 keeps serving" in refusal(client, rule_id)
    assert decide(client, 50, rule_id) == "deny"  # version 2's limit of 10 still holds


def test_a_replica_refuses_what_it_reads(system):
    client, _, url, tmp = system
    rule_id = create(client, "seen-by-b")

    async def rewrite(kv) -> None:
        fields = tampered(await latest(kv, rule_id), opa_policy=ALLOW_ALL, version=5)
        fields.pop("signature")
        await kv.put(key_for(uuid.UUID(rule_id)), msgspec.json.encode(fields))

    kv_write(url, rewrite)
    wait_until(lambda: bool(refusal(client, rule_id)))
    b = make_settings(tmp / "b", compile_on_start=True, nats_url=url, record_key_file=tmp / "record-key.pem")
    with running_control_plane(b) as sb, httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=30) as cb:
        # B starts after the rewrite: the bucket's newest value is the forged one, and B has never
        # seen a trusted version of this policy, so it serves none
        assert "refused, unsigned: it carries no signature" in refusal(cb, rule_id)
        assert rule_id not in {str(r.rule_id) for r in sb.policies.active_records()}
        assert cb.get(f"/api/v1/policies/{rule_id}").status_code == 404


def test_a_deleted_policy_put_back_is_refused(system):
    client, _, url, _ = system
    rule_id = create(client, "stays-deleted")
    key = key_for(uuid.UUID(rule_id))
    stored: list[bytes] = []

    async def keep(kv) -> None:
        stored.append(await latest(kv, rule_id))

    kv_write(url, keep)
    assert client.delete(f"/api/v1/policies/{rule_id}", params={"constitutional_hash": H}).status_code == 200
    kv_write(url, lambda kv: kv.put(key, stored[0]))  # its last signed version, put back
    wait_until(lambda: bool(refusal(client, rule_id)))
    assert "refused, replayed: version 1 put back after the policy was deleted" in refusal(client, rule_id)
    assert client.get(f"/api/v1/policies/{rule_id}").status_code == 404
    assert rule_id not in {p["rule_id"] for p in client.get("/api/v1/policies").json()}
