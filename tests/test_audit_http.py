"""The audit trail through the control plane: evaluations and decision logs become records,
`/api/v1/audit` filters them, `/api/v1/audit/verify` catches tampering, escalations reach NATS,
and a real OPA agent's decision logs end up in the chain."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import nats
import pytest
import yaml

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit import AuditRecord
from controlplane.audit.escalation import SUBJECT, decode_escalation, publish_escalation
from controlplane.audit.records import GENESIS_HASH, digest, seal
from controlplane.infra.processes import start_opa_agent
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    AGENT_TOKEN,
    EVALUATE_TOKEN,
    bearer,
    gzip_json,
    make_settings,
    running_control_plane,
)


@pytest.fixture
def cp(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, timeout=30, headers=ADMIN_HEADERS) as client:
            yield client, services, nats_server.extra["url"]


@pytest.fixture(scope="module")
def compiled_cp(tmp_path_factory, nats_server_module):
    """A control plane that compiled and published the policy library (the constitution runs)."""
    settings = make_settings(tmp_path_factory.mktemp("cp") / "state", nats_url=nats_server_module.extra["url"],
                             compile_on_start=True)
    with running_control_plane(settings) as services:
        with httpx.Client(base_url=settings.base_url, timeout=30, headers=ADMIN_HEADERS) as client:
            deadline = time.monotonic() + 120
            while not client.get("/health").json()["bundles"]:
                assert time.monotonic() < deadline, "library not published"
                time.sleep(0.1)
            yield client, services, nats_server_module.extra["url"]


def evaluate(client: httpx.Client, context: dict, tier: str = "fast") -> dict:
    r = client.post("/api/v1/evaluate", headers=bearer(EVALUATE_TOKEN), json={
        "input_context": context, "policy_types": ["security_policies"], "performance_tier": tier,
        "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    return r.json()


def records(client: httpx.Client, **params) -> list[dict]:
    r = client.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    return r.json()["records"]


def test_evaluations_and_batches_are_audited(cp):
    client, services, _ = cp
    one = evaluate(client, {"principal": "alice"})
    r = client.post("/api/v1/evaluate/batch", headers=bearer(EVALUATE_TOKEN), json={
        "batch_contexts": [{"principal": "a"}, {"principal": "b"}, {"principal": "c"}],
        "policy_types": ["security_policies"], "performance_tier": "balanced", "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text
    batch = r.json()
    got = records(client)
    assert len(got) == 2  # one record per request: the batch's three evaluations are entries of one record
    first = got[0]["record"]
    assert got[0]["seq"] == 1 and got[0]["subject"] == f"audit.api.{one['decision']}"
    assert first["evaluation_id"] == one["evaluation_id"] and first["decision"] == one["decision"]
    assert first["constitutional_hash"] == CONSTITUTIONAL_HASH and first["prev_hash"] == GENESIS_HASH
    assert first["performance_tier"] == "fast"
    assert first["input_sha256"] == digest({"principal": "alice"})
    rec = got[1]["record"]
    strictest = "deny" if any(x["decision"] == "deny" for x in batch["results"]) else max(x["decision"] for x in batch["results"])
    assert (rec["source"], rec["batch_id"], rec["decision"], rec["performance_tier"]) == ("batch", batch["batch_id"], strictest, "balanced")
    assert got[1]["subject"] == f"audit.batch.{strictest}" and rec["prev_hash"] == first["hash"]
    assert [(e["evaluation_id"], e["decision"], e["input_sha256"]) for e in rec["evaluations"]] == [
        (x["evaluation_id"], x["decision"], digest(c)) for x, c in zip(batch["results"], [{"principal": p} for p in "abc"], strict=True)]
    assert [g["seq"] for g in records(client, source="batch")] == [2]
    assert records(client, evaluation_id=one["evaluation_id"])[0]["seq"] == 1
    assert [g["seq"] for g in records(client, evaluation_id=batch["results"][1]["evaluation_id"])] == [2]
    report = client.get("/api/v1/audit/verify").json()
    assert report == {"ok": True, "checked": 2, "first_seq": 1, "last_seq": 2, "last_hash": rec["hash"],
                      "bad": 0, "first_bad_seq": None, "problem": "", "reason": "",
                      "signers": {services.audit.writer.keys.kid: 2}, "checkpoint": None}


def test_decision_logs_are_audited_once_even_when_retried(cp):
    client, _, _ = cp
    events = [
        {"decision_id": "d-1", "path": "groqpolicy/policies/security_policies/decision", "labels": {"id": "x", "agent": "a1"},
         "result": {"decision": "deny", "reasons": ["deny: no"], "confidence": 1}, "input": {"user": "bob"},
         "bundles": {"groqpolicy": {"revision": "r1"}}, "timestamp": "2026-11-27T12:00:00Z"},
        {"decision_id": "d-2", "path": "system/main", "labels": {"id": "x"}, "result": True},
    ]
    headers = {**bearer(AGENT_TOKEN), "Content-Encoding": "gzip"}
    assert client.post("/logs", content=gzip_json(events), headers=headers).status_code == 204
    assert client.post("/logs", content=gzip_json(events), headers=headers).status_code == 204  # the agent retries
    got = records(client, source="opa-agent")
    assert [(g["record"]["decision_id"], g["record"]["decision"]) for g in got] == [("d-1", "deny"), ("d-2", "allow")]
    assert got[0]["record"]["agent_id"] == "a1" and got[0]["record"]["bundle_revisions"] == {"groqpolicy": "r1"}
    assert records(client, decision="deny", source="opa-agent")[0]["record"]["decision_id"] == "d-1"
    assert client.get("/api/v1/audit/verify").json()["checked"] == 2
    # a body that is not an array of events is refused before anything is recorded
    r = client.post("/logs", content=gzip_json({"path": "x"}), headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("decision log batch: expected a JSON array of events")
    assert len(records(client)) == 2


def test_query_errors_are_400_with_the_parameter_named(cp):
    client, _, _ = cp
    r = client.get("/api/v1/audit", params={"since": "yesterday"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "since: 'yesterday': expected RFC 3339 (2026-11-27T12:00:00Z) or epoch seconds"
    r = client.get("/api/v1/audit", params={"source": "web"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "source: 'web' unknown (expected one of api, batch, nats, opa-agent)"
    r = client.get("/api/v1/audit", params={"until": "1e400"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "until: '1e400': epoch seconds out of range (0 to 253402300799)"
    assert client.get("/api/v1/audit", params={"after_seq": 2**64}).status_code == 400
    assert client.get("/api/v1/audit", params={"after_seq": 2**63 - 2}).json()["records"] == []
    r = client.get("/api/v1/audit", params={"limit": 0})
    assert r.status_code == 400
    r = client.get("/api/v1/audit", params={"limit": 1001})
    assert r.status_code == 400


def test_time_filters_and_pages(cp):
    client, _, _ = cp
    for i in range(3):
        evaluate(client, {"principal": f"p{i}"})
    mid = time.time()
    time.sleep(0.02)
    evaluate(client, {"principal": "late"})
    assert [g["seq"] for g in records(client, since=str(mid))] == [4]
    assert [g["seq"] for g in records(client, until="2000-01-01T00:00:00Z")] == []
    page = client.get("/api/v1/audit", params={"limit": 3}).json()
    assert [g["seq"] for g in page["records"]] == [1, 2, 3] and page["next_after_seq"] == 3
    page = client.get("/api/v1/audit", params={"limit": 3, "after_seq": 3}).json()
    assert [g["seq"] for g in page["records"]] == [4] and page["next_after_seq"] is None
    page = client.get("/api/v1/audit", params={"limit": 3, "newest_first": True}).json()
    assert [g["seq"] for g in page["records"]] == [4, 3, 2] and page["next_before_seq"] == 2
    page = client.get("/api/v1/audit", params={"limit": 3, "before_seq": 2}).json()
    assert [g["seq"] for g in page["records"]] == [1] and page["next_before_seq"] is None


def test_verify_over_http_reports_a_forged_record(cp):
    client, _, url = cp
    evaluate(client, {"principal": "alice"})
    assert len(records(client)) == 1  # a read waits until this replica's spooled records are in JetStream

    async def forge() -> str:
        nc = await nats.connect(url)
        try:
            forged, data = seal(AuditRecord(source="api", decision="allow", evaluation_id="forged"), "f" * 64)
            await nc.jetstream().publish("audit.api.allow", data)
            return forged.hash
        finally:
            await nc.close()

    asyncio.run(forge())
    evaluate(client, {"principal": "bob"})  # appends keep going after the forgery
    report = client.get("/api/v1/audit/verify").json()
    assert report["ok"] is False and report["first_bad_seq"] == 2 and report["checked"] == 3 and report["bad"] == 1
    assert report["problem"] == "broken link"
    assert report["reason"].startswith("prev_hash: does not link to the previous record (want: ")
    assert report["reason"].endswith(f"got: {'f' * 64})")


def test_constitutional_violations_publish_escalations(compiled_cp):
    client, _, url = compiled_cp
    received: list[bytes] = []

    async def run() -> dict:
        nc = await nats.connect(url)

        async def on_event(msg) -> None:
            received.append(msg.data)

        sub = await nc.subscribe(SUBJECT, cb=on_event)
        await nc.flush()
        body = await asyncio.to_thread(evaluate, client, {"action": "read"})  # no principal: pre-validation fails
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await sub.unsubscribe()
        await nc.close()
        return body

    body = asyncio.run(run())
    assert body["decision"] == "deny", body
    assert body["constitutional_compliance"]["violations"], body
    assert len(received) == 1
    event = decode_escalation(received[0])
    assert (event.evaluation_id, event.decision, event.stage) == (body["evaluation_id"], "deny", "pre_validation")
    assert event.constitutional_hash == CONSTITUTIONAL_HASH
    assert any(v.message == "principal is missing (an accountable principal must be named)" for v in event.violations)
    assert event.input_sha256 == digest({"action": "read"}) and event.performance_tier == "fast"
    assert records(client, evaluation_id=body["evaluation_id"])[0]["record"]["violations"]


async def test_publish_escalation_without_a_connection_reports_not_delivered():
    event, delivered = await publish_escalation(None, evaluation_id="e", stage="post_validation", decision="review",
                                                violations=[{"principle": "P1", "message": "m"}])
    assert delivered is False and event.violations[0].principle == "P1"
    assert msgspec.json.decode(msgspec.json.encode(event))["decision"] == "review"


def test_audit_is_unavailable_means_503_and_the_agent_retries(tmp_path, nats_server):
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings) as services, httpx.Client(base_url=settings.base_url, timeout=30) as client:
        services.audit.append_deadline = 1.0
        services.audit.timeout = 0.3
        nats_server.kill()
        r = client.post("/logs", content=gzip_json([{"decision_id": "lost?", "result": True}]),
                        headers={**bearer(AGENT_TOKEN), "Content-Encoding": "gzip"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "AuditUnavailable"
        assert r.json()["error"]["message"].startswith("audit trail: 1 record(s) not acknowledged within 1s")
        assert services.decision_logs.total == 0  # not stored either: the agent's re-upload is the only copy


def test_a_real_opa_agents_decision_logs_reach_the_audit_trail(compiled_cp, tmp_path, opa_bin):
    """The agent is configured from /api/v1/opa/config (so it carries the agent token)."""
    client, _, _ = compiled_cp
    cfg = client.get("/api/v1/opa/config", params={"agent_id": "audit-agent", "min_delay_s": 1, "max_delay_s": 2,
                                                   "log_min_delay_s": 1, "log_max_delay_s": 1, "long_polling_timeout_s": 1}).text
    assert yaml.safe_load(cfg)["services"]["groqpolicy"]["credentials"]["bearer"]["token"] == AGENT_TOKEN
    (tmp_path / "agent.yaml").write_text(cfg)
    agent = start_opa_agent(tmp_path / "agent.yaml", tmp_path / "opa")
    try:
        with httpx.Client(base_url=agent.extra["url"], timeout=30) as opa:
            deadline = time.monotonic() + 30
            while opa.get("/health", params={"bundles": "true"}).status_code != 200:
                assert time.monotonic() < deadline, agent.log()[-2000:]
                time.sleep(0.2)
            r = opa.post("/v1/data/groqpolicy/policies/security_policies/decision", json={"input": {
                "principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
                "action": "delete", "resource": {"type": "reports", "classification": "internal"}}})
            decision_id = r.json()["decision_id"]
            assert r.json()["result"]["decision"] == "deny"
        deadline = time.monotonic() + 20
        while not (got := records(client, decision_id=decision_id)):
            assert time.monotonic() < deadline, agent.log()[-3000:]
            time.sleep(0.2)
        rec = got[0]["record"]
        assert (rec["source"], rec["decision"], rec["agent_id"]) == ("opa-agent", "deny", "audit-agent")
        assert rec["path"] == "groqpolicy/policies/security_policies/decision"
        assert rec["bundle_revisions"]["groqpolicy"]
        assert client.get("/api/v1/audit/verify").json()["ok"] is True
    finally:
        agent.stop()
