"""Shadow mode across the control-plane processes of one deployment: two control planes (each a
replica with its own memory, as `GROQPOLICY_PROCESSES` makes them) on one real nats-server. A
shadow begun on one is compared on both, either one lists the deployment's counts, a process that
stops leaves its counts in the sum, a discard on one ends it on the other (audited once), and a bad
record in the bucket is reported, never fatal."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import nats
import pytest
from nats.js.errors import KeyNotFoundError

from bridge.kernel.errors import Unavailable
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.impact import shadow_state
from controlplane.impact.candidate import CandidateSpec
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
        # restored at start with what every process had saved, then A's last count when A saves it
        # (every SAVE_S: B may start in between, as it did in CI)
        wait_until(lambda: _counts(cb) == (8, 8, 0))
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


def _policy(client: httpx.Client, name: str) -> str:
    created = client.post("/api/v1/policies", json={"name": name, "policy_type": "risk_management",
                                                    "opa_policy": limit(100), "constitutional_hash": CONSTITUTIONAL_HASH,
                                                    "performance_tier": "fast"})
    assert created.status_code == 201, created.text
    return created.json()["rule_id"]


def _texts(services) -> dict[str, str]:
    return {str(r.rule_id): r.opa_policy for r in services.policies.list()}


def test_promote_removes_the_definition_before_it_applies_the_candidate(deployment, monkeypatch):
    _, (_, sa, ca), _ = deployment
    rule = _policy(ca, "limits")
    assert ca.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": limit(50)}}).status_code == 201
    seen: list[bool] = []
    apply = sa.shadows._apply

    async def observed(spec):  # what the bucket holds when the candidate is written
        kv = await sa.shadows.bucket.bucket()
        try:
            await kv.get(f"{shadow_state.SHADOW}{rule}")
            seen.append(True)
        except KeyNotFoundError:
            seen.append(False)
        await apply(spec)

    monkeypatch.setattr(sa.shadows, "_apply", observed)
    promoted = ca.post(f"/api/v1/shadows/{rule}/promote", json={"force": True})
    assert promoted.status_code == 200, promoted.text
    assert seen == [False]  # gone before the write: a failed removal can never leave an applied shadow behind
    assert _texts(sa)[rule] == limit(50)


def test_a_candidate_over_the_policies_cap_is_refused(deployment):
    _, (_, _, ca), _ = deployment
    rule = _policy(ca, "limits")
    huge = limit(50) + "#" * (256 * 1024)  # over the policies' cap (and NATS's 1 MiB max_payload when longer)
    r = ca.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": huge}})
    assert r.status_code == 400, r.text
    assert _shadows(ca) == []


def test_without_nats_shadow_start_and_promote_answer_503_and_apply_nothing(deployment, nats_server):
    _, (_, sa, ca), _ = deployment
    rule, other = _policy(ca, "limits"), _policy(ca, "other limits")
    assert ca.post("/api/v1/shadows", json={"candidate": {"rule_id": rule, "opa_policy": limit(50)}}).status_code == 201
    nats_server.stop()
    promoted = ca.post(f"/api/v1/shadows/{rule}/promote", json={"force": True})
    assert promoted.status_code == 503, promoted.text
    assert _texts(sa)[rule] == limit(100)  # nothing applied
    assert [s["rule_id"] for s in _shadows(ca)] == [rule]  # and the shadow goes on
    begun = ca.post("/api/v1/shadows", json={"candidate": {"rule_id": other, "opa_policy": limit(50)}})
    assert begun.status_code == 503, begun.text
    assert [s["rule_id"] for s in _shadows(ca)] == [rule]


async def test_a_value_nats_refuses_is_unavailable_not_a_500(nats_server):
    """Any NATS error of the bucket is a 503 that says so (here a value over the server's max_payload,
    as a saved shadow from before the cap could be), not an unhandled NATS exception."""
    nc = await nats.connect(nats_server.extra["url"])
    try:
        bucket = shadow_state.ShadowBucket(lambda: nc)
        spec = CandidateSpec(rule_id=uuid.uuid4(), opa_policy="#" * (2 * 1024 * 1024))  # built, not decoded: no cap
        with pytest.raises(Unavailable, match="JetStream unreachable or refused"):
            await bucket.create(spec.rule_id, shadow_state.SavedShadow(spec=spec, sample=1.0, started_at=0.0))
        assert await bucket.load() == {}  # nothing saved
    finally:
        await nc.close()
