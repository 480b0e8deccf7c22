"""Shadow mode across the control-plane processes of one deployment: two control planes (each a
replica with its own memory, as `GROQPOLICY_PROCESSES` makes them) on one real nats-server. A
shadow begun on one is compared on both, either one lists the deployment's counts, a process that
stops leaves its counts in the sum, a discard on one ends it on the other (audited once), and a bad
record in the bucket is reported, never fatal."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.impact import shadow_state
from tests.controlplane_helpers import ADMIN_HEADERS, EVALUATE_TOKEN, bearer, make_settings, running_control_plane
from tests.test_evaluate_nats import limit, wait_until

pytestmark = pytest.mark.slow


def _evaluate(client: httpx.Client, amounts: list[int]) -> None:
    for amount in amounts:
        r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
            "input_context": {"principal": {"id": "svc"}, "amount": amount}, "constitutional_hash": CONSTITUTIONAL_HASH,
            "performance_tier": "fast", "policy_types": ["risk_management"]})
        assert r.status_code == 200, r.text
        assert r.json()["decision"] == "allow", r.text  # the live rule (above 100) allows what the candidate (above 50) denies


def _shadows(client: httpx.Client) -> list[dict]:
    r = client.get("/api/v1/shadows")
    assert r.status_code == 200, r.text
    return r.json()


def _counts(client: httpx.Client) -> tuple[int, int, int] | None:
    found = _shadows(client)
    return (found[0]["compared"], found[0]["diverged"], found[0]["errors"]) if found else None


async def _put_raw(url: str, key: str, value: bytes) -> None:
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(shadow_state.BUCKET)
        await kv.put(key, value)
    finally:
        await nc.close()


@pytest.fixture
def deployment(tmp_path, nats_server):
    url = nats_server.extra["url"]
    shared = {"record_key_file": tmp_path / "record-key.pem", "bridge_token_file": tmp_path / "bridge-token",
              "nats_url": url, "compile_on_start": True, "processes": 2}
    a, b = make_settings(tmp_path / "a", **shared), make_settings(tmp_path / "b", **shared)
    with running_control_plane(a) as sa, httpx.Client(base_url=a.base_url, headers=ADMIN_HEADERS, timeout=60) as ca:
        yield url, (a, sa, ca), b


def test_a_shadow_is_shared_counted_across_processes_and_ended_everywhere(deployment):
    url, (_, _, ca), b = deployment
    created = ca.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management",
                                                "opa_policy": limit(100), "constitutional_hash": CONSTITUTIONAL_HASH,
                                                "performance_tier": "fast"})
    assert created.status_code == 201, created.text
    rule = created.json()["rule_id"]
    with running_control_plane(b) as sb, httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=60) as cb:
        wait_until(lambda: sb.runtime.evaluator.revision == created.json()["bundle_revision"])
        r = ca.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": limit(50)}, "sample": 1.0})
        assert r.status_code == 201, r.text
        wait_until(lambda: [s["rule_id"] for s in _shadows(cb)] == [rule])  # begun on A, compared on B too
        again = cb.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": limit(60)}})
        assert again.status_code == 409, again.text  # one shadow per policy, whichever process is asked
        _evaluate(ca, [60, 61, 62])
        _evaluate(cb, [70, 71, 72, 73])
        wait_until(lambda: _counts(ca) == (7, 7, 0) and _counts(cb) == (7, 7, 0))  # the sum, on either
        assert f'groqpolicy_shadow_divergence_ratio{{policy="{rule}"}} 1.0' in cb.get("/metrics").text
        # a bad record in the bucket: each process reports it and goes on
        asyncio.run(_put_raw(url, f"count.{rule}.garbage", b"not json"))
        asyncio.run(_put_raw(url, "shadow.00000000-0000-0000-0000-000000000001", b"{broken"))
        wait_until(lambda: "00000000-0000-0000-0000-000000000001" in cb.get("/api/v1/shadows/unrestored").json())
        assert "00000000-0000-0000-0000-000000000001" in ca.get("/api/v1/shadows/unrestored").json()
        assert _counts(ca) == _counts(cb) == (7, 7, 0)
    # B has stopped: its comparisons stay in the deployment's counts
    _evaluate(ca, [80])
    wait_until(lambda: _counts(ca) == (8, 8, 0))
    with running_control_plane(b), httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=60) as cb:
        assert _counts(cb) == (8, 8, 0)  # restored at start, with every process's counts
        refused = cb.post(f"/api/v1/shadows/{rule}/promote")  # the threshold sees the whole deployment's rate
        assert refused.status_code == 409 and "100.00%" in refused.json()["error"]["message"], refused.text
        discarded = cb.post(f"/api/v1/shadows/{rule}/discard")
        assert discarded.status_code == 200 and discarded.json()["compared"] == 8, discarded.text
        wait_until(lambda: _shadows(ca) == [])  # discarded on B: ended on A
        assert cb.post("/api/v1/shadows/00000000-0000-0000-0000-000000000001/discard").status_code == 200
        wait_until(lambda: ca.get("/api/v1/shadows/unrestored").json() == {})
        _evaluate(ca, [90])
        assert f'policy="{rule}"' not in ca.get("/metrics").text.split("groqpolicy_shadow_divergence_ratio", 1)[-1]
    records = [r["record"] for r in ca.get("/api/v1/audit", params={"source": "admin", "limit": 100}).json()["records"]]
    actions = [r["details"]["action"] for r in records if r["details"].get("rule_id") == rule]
    assert sorted(actions) == ["discard", "promote", "shadow"]  # begun, refused and discarded: each once


def test_a_shadow_begun_anew_after_a_discard_starts_from_zero(deployment):
    _, (_, _, ca), b = deployment
    created = ca.post("/api/v1/policies", json={"name": "limits", "policy_type": "risk_management",
                                                "opa_policy": limit(100), "constitutional_hash": CONSTITUTIONAL_HASH,
                                                "performance_tier": "fast"})
    rule = created.json()["rule_id"]
    with running_control_plane(b) as sb, httpx.Client(base_url=b.base_url, headers=ADMIN_HEADERS, timeout=60) as cb:
        wait_until(lambda: sb.runtime.evaluator.revision == created.json()["bundle_revision"])
        body = {"candidate": {"rule_id": rule, "opa_policy": limit(50)}, "sample": 1.0}
        assert cb.post("/api/v1/shadows", json=body).status_code == 201
        wait_until(lambda: _shadows(ca) != [])
        _evaluate(ca, [60, 61])
        wait_until(lambda: _counts(cb) == (2, 2, 0))
        assert ca.post(f"/api/v1/shadows/{rule}/discard").status_code == 200
        wait_until(lambda: _shadows(cb) == [])
        assert ca.post("/api/v1/shadows", json=body).status_code == 201  # the same policy, a new shadow
        wait_until(lambda: _counts(cb) == (0, 0, 0))
        _evaluate(cb, [62])
        wait_until(lambda: _counts(ca) == (1, 1, 0) and _counts(cb) == (1, 1, 0))  # nothing of the old one's
