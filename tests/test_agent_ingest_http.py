"""Decision-log and status ingestion over real HTTP, the audit trail on the embedded nats-server,
and a real OPA agent: bad events are refused one by one and audited, the batch is stored and
answered 204, bad status reports are a 400 that writes nothing, a full disk is a 503, and every
start after all of it is clean."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from bridge.opabundle.archive import write_bundle
from bridge.opabundle.signing import sign_bundle
from controlplane.infra.processes import start_opa_agent
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    AGENT_TOKEN,
    bearer,
    gzip_json,
    make_settings,
    running_control_plane,
)

AGENT = {**bearer(AGENT_TOKEN), "Content-Encoding": "gzip"}


def event(decision_id: str, result: object = True, **extra: object) -> dict:
    return {"decision_id": decision_id, "labels": {"id": "opa-1", "agent": "edge-1"}, "path": "groqpolicy/x",
            "input": {"user": "bob"}, "result": result, "timestamp": "2026-12-02T11:00:00.123456789Z", **extra}


def audit(client: httpx.Client, **params: str) -> list[dict]:
    r = client.get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    return [g["record"] for g in r.json()["records"]]


def events_counted(client: httpx.Client, outcome: str) -> float:
    text = client.get("/metrics").text
    prefix = f'groqpolicy_decision_log_events_total{{outcome="{outcome}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


def test_a_batch_is_stored_event_by_event_and_every_start_after_it_is_clean(tmp_path):
    settings = make_settings(tmp_path / "state")
    big = event("big", result={"decision": "deny", "reasons": ["x" * 600_000]})
    batch = [event("d-1"), big, event("bad-labels", labels=[1, 2]), event("d-1", result=False), event("d-2")]
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        before = {o: events_counted(client, o) for o in ("stored", "repeated", "rejected")}
        assert client.post("/logs", content=gzip_json(batch), headers=AGENT).status_code == 204
        assert client.post("/logs", content=gzip_json(batch), headers=AGENT).status_code == 204  # the agent retries
        stored = client.get("/api/v1/opa/decisions").json()
        assert [(e["decision_id"], e["result"]) for e in stored["decisions"]] == [("d-2", True), ("d-1", False), ("d-1", True)]
        rejected = audit(client, source="opa-agent", decision="rejected")
        assert [(r["decision_id"], r["agent_id"]) for r in rejected] == [("big", "edge-1"), ("bad-labels", "")]
        assert rejected[0]["details"]["rejected"]["bytes"] > 600_000
        assert "above the 262144-byte limit for one event" in rejected[0]["reasons"][0]
        assert rejected[1]["reasons"] == ["event [2]: Expected `object`, got `array` - at `$.labels`"]
        assert len(rejected[1]["details"]["rejected"]["event_sha256"]) == 64
        d1 = audit(client, decision_id="d-1")
        assert [r["decision"] for r in d1] == ["allow", "deny"]  # both kept; the second flagged
        assert "repeated_decision_id" not in d1[0]["details"]
        assert d1[1]["details"]["repeated_decision_id"]["first_event_sha256"]
        assert len(audit(client, source="opa-agent")) == 5
        counted = {o: events_counted(client, o) - n for o, n in before.items()}
        assert counted == {"stored": 3, "repeated": 1, "rejected": 4}  # the retry's refused events count again
        assert client.get("/api/v1/audit/verify").json()["ok"] is True
    # a torn last line, as a crash mid-write leaves it
    with open(tmp_path / "state" / "decision_logs.jsonl", "ab") as fh:
        fh.write(b'{"decision_id": "torn", "resu')
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        assert [e["decision_id"] for e in client.get("/api/v1/opa/decisions").json()["decisions"]] == ["d-2", "d-1", "d-1"]
        assert client.get("/health").json()["status"] in ("ok", "degraded")
    assert (tmp_path / "state" / "decision_logs.jsonl.quarantine").read_bytes() == b'{"decision_id": "torn", "resu\n'


def test_bad_status_reports_are_400_write_nothing_and_listings_keep_working(tmp_path):
    settings = make_settings(tmp_path / "state", max_status_bytes=4096)
    status_file = tmp_path / "state" / "agent_status.jsonl"
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=60) as client:
        good = {"labels": {"id": "opa-1", "agent": "edge-1"}, "bundles": {"groqpolicy": {"name": "groqpolicy", "active_revision": "r1"}}}
        assert client.post("/status", json=good, headers=bearer(AGENT_TOKEN)).status_code == 204
        before = status_file.read_bytes()
        for doc, where in (({"labels": [1, 2]}, "$.labels"), ({"bundles": [1]}, "$.bundles")):
            r = client.post("/status", json=doc, headers=bearer(AGENT_TOKEN))
            assert r.status_code == 400
            assert r.json()["error"]["message"] == f"status: Expected `object`, got `array` - at `{where}`"
        r = client.post("/status", content=b'{"labels": {"id": "' + b"x" * 10_000 + b'"}}', headers=bearer(AGENT_TOKEN))
        assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["error"]["message"]
        assert status_file.read_bytes() == before
        assert [a["id"] for a in client.get("/api/v1/opa/agents").json()] == ["edge-1"]
        assert client.get("/").status_code == 200  # the dashboard's agents panel
        cli = subprocess.run([sys.executable, "-m", "controlplane.ops.cli", "agents", "--url", settings.base_url,
                              "--token", ADMIN_TOKEN], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert cli.returncode == 0 and "edge-1" in cli.stdout, cli.stderr
    # a line an older version let in is quarantined at the next start, not fatal
    with open(status_file, "ab") as fh:
        fh.write(json.dumps({"received_at": 1.0, "status": {"labels": [1, 2]}}).encode() + b"\n")
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        assert [a["id"] for a in client.get("/api/v1/opa/agents").json()] == ["edge-1"]
    assert b'"labels": [1, 2]' in (tmp_path / "state" / "agent_status.jsonl.quarantine").read_bytes()


def test_a_40_mb_status_report_is_413(tmp_path):
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings), httpx.Client(base_url=settings.base_url, timeout=60) as client:
        doc = b'{"labels": {"id": "a"}, "metrics": {"m": "' + b"x" * (40 * 1024 * 1024) + b'"}}'
        r = client.post("/status", content=doc, headers=bearer(AGENT_TOKEN))
        assert r.status_code == 413, r.text
        assert r.json()["error"]["message"] == f"body: {len(doc)} bytes exceeds the limit of {2 * 1024 * 1024}"
        assert not (tmp_path / "state" / "agent_status.jsonl").exists()


def test_a_full_disk_is_a_503_never_a_2xx_that_was_not_stored(tmp_path):
    state = tmp_path / "state"
    settings = make_settings(state)
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        (state / "decision_logs.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
        (state / "agent_status.jsonl").symlink_to("/dev/full")
        r = client.post("/logs", content=gzip_json([event("on-a-full-disk")]), headers=AGENT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "No space left on device" in r.json()["error"]["message"]
        assert services.decision_logs.total == 0
        r = client.post("/status", json={"labels": {"id": "a"}}, headers=bearer(AGENT_TOKEN))
        assert r.status_code == 503 and "nothing was stored" in r.json()["error"]["message"]
        assert client.get("/api/v1/opa/agents").json() == []
        # space again: the agent's retry lands, once
        (state / "decision_logs.jsonl").unlink()
        assert client.post("/logs", content=gzip_json([event("on-a-full-disk")]), headers=AGENT).status_code == 204
        assert [e["decision_id"] for e in client.get("/api/v1/opa/decisions").json()["decisions"]] == ["on-a-full-disk"]
        assert len(audit(client, decision_id="on-a-full-disk")) == 1


ECHO = b"package groqpolicy.echo\n\nvalue := input.value\n"


@pytest.mark.slow
def test_a_real_agent_keeps_logging_after_a_600_kb_result(tmp_path, opa_bin):
    settings = make_settings(tmp_path / "state")
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        manifest = json.dumps({"revision": "echo-1", "roots": ["groqpolicy"]}).encode()
        files = sign_bundle({"/.manifest": manifest, "/groqpolicy/echo/echo.rego": ECHO}, services.signing_key)
        services.store.activate("groqpolicy", "echo-1", {"rego": write_bundle(files)}, signed_by=services.signing_key.kid)
        cfg = client.get("/api/v1/opa/config", params={"agent_id": "big-agent", "min_delay_s": 1, "max_delay_s": 2,
                                                       "log_min_delay_s": 1, "log_max_delay_s": 1}).text
        (tmp_path / "agent.yaml").write_text(cfg)
        agent = start_opa_agent(tmp_path / "agent.yaml", tmp_path / "opa")
        try:
            with httpx.Client(base_url=agent.extra["url"], timeout=30) as opa:
                wait_for(lambda: opa.get("/health", params={"bundles": "true"}).status_code == 200, 30, "bundle activation")
                ids = [opa.post("/v1/data/groqpolicy/echo/value", json={"input": {"value": v}}).json()["decision_id"]
                       for v in ("small", "x" * 600_000, "after")]
            decisions = lambda: {e["decision_id"] for e in client.get("/api/v1/opa/decisions").json()["decisions"]}  # noqa: E731
            wait_for(lambda: {ids[0], ids[2]} <= decisions(), 30, "the decisions around the big one")
            assert ids[1] not in decisions()
            rejected = wait_for(lambda: audit(client, decision="rejected"), 10, "the rejection record")
            assert (rejected[0]["decision_id"], rejected[0]["agent_id"]) == (ids[1], "big-agent")
            assert "above the 262144-byte limit" in rejected[0]["reasons"][0]
        finally:
            agent.stop()
