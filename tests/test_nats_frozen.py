"""A control plane whose NATS is connected but answers nothing (nats-server frozen with SIGSTOP).

Decisions are still answered, their audit records wait in the spool, and once the oldest has waited
`AUDIT_WAIT_DEGRADED_S` `/health` says degraded (before, "ok" and `nats: true` for as long as the TCP
connection stayed up), and so does the dashboard; `ok` again once JetStream has taken them; the
same backlog is on `/metrics`.
An OPA agent's decision-log upload, whose records must be in JetStream before its 204, is a 503
after `APPEND_WAIT_S` (before, it was held 40 s and more, past the agent's own wait), and its
re-send once NATS is back is stored once."""

from __future__ import annotations

import time

import httpx

import controlplane.agents.uploads
import controlplane.infra.health
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from tests.bridge_helpers import frozen
from tests.controlplane_helpers import (
    ADMIN_HEADERS,
    AGENT_TOKEN,
    bearer,
    gzip_json,
    make_settings,
    running_control_plane,
)

BODY = {"input_context": {"principal": "alice"}, "constitutional_hash": CONSTITUTIONAL_HASH}


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_health_says_degraded_while_audit_records_wait_for_a_frozen_jetstream(tmp_path, nats_server, monkeypatch):
    monkeypatch.setattr(controlplane.infra.health, "AUDIT_WAIT_DEGRADED_S", 1.0)
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings), \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        _until(lambda: client.post("/api/v1/evaluate", json=BODY).status_code == 200, 60, "the evaluator")
        _until(lambda: client.get("/health").json()["audit"]["waiting"] == 0, 30, "the first records stored")
        assert client.get("/health").json()["status"] == "ok"
        with frozen(nats_server):
            for _ in range(3):  # answered: the records are in the spool
                assert client.post("/api/v1/evaluate", json=BODY).status_code == 200
            health = client.get("/health").json()
            assert health["status"] == "ok" and health["audit"]["waiting"] == 3  # not waited long yet
            health = _until(lambda: (h := client.get("/health").json())["status"] == "degraded" and h, 10, "degraded")
            assert health["nats"] is True and health["audit"]["waiting"] == 3
            assert health["audit"]["oldest_waiting_s"] >= 1.0
            assert '<span class="pill bad">degraded</span>' in client.get("/").text  # the dashboard says so too
            metrics = client.get("/metrics").text
            assert "groqpolicy_audit_backlog 3.0" in metrics
            assert "groqpolicy_audit_backlog_oldest_seconds 0.0" not in metrics
        health = _until(lambda: (h := client.get("/health").json())["status"] == "ok" and h, 30, "ok again")
        assert health["audit"] == {"waiting": 0, "oldest_waiting_s": 0.0}


def test_a_decision_log_upload_is_a_503_in_time_and_its_re_send_is_stored_once(tmp_path, nats_server, monkeypatch):
    monkeypatch.setattr(controlplane.agents.uploads, "APPEND_WAIT_S", 1.0)
    agent = {**bearer(AGENT_TOKEN), "Content-Encoding": "gzip"}
    batch = gzip_json([{"decision_id": "frozen-1", "labels": {"id": "opa-1"}, "path": "groqpolicy/x",
                        "input": {"user": "bob"}, "result": True, "timestamp": "2026-12-05T12:00:00Z"}])
    settings = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"])
    with running_control_plane(settings), \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        with frozen(nats_server):
            t0 = time.monotonic()
            r = client.post("/logs", content=batch, headers=agent)
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert "within 1 s" in r.json()["error"]["message"] and took < 5
        _until(lambda: client.post("/logs", content=batch, headers=agent).status_code == 204, 30, "the re-send stored")
        records = client.get("/api/v1/audit", params={"decision_id": "frozen-1"}).json()["records"]
        assert len(records) == 1, records
        assert [d["decision_id"] for d in client.get("/api/v1/opa/decisions").json()["decisions"]] == ["frozen-1"]
