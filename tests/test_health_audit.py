"""`/health` while NATS is connected but answers nothing (nats-server frozen with SIGSTOP): the
decisions are still answered, their audit records wait in the spool, and once the oldest has waited
`AUDIT_WAIT_DEGRADED_S` the control plane says it is degraded (before, "ok" and `nats: true` for as
long as the TCP connection stayed up); `ok` again once JetStream has taken them. The same backlog is
on `/metrics`."""

from __future__ import annotations

import time

import httpx

import controlplane.app
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from tests.bridge_helpers import frozen
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane

BODY = {"input_context": {"principal": "alice"}, "constitutional_hash": CONSTITUTIONAL_HASH}


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return found


def test_health_says_degraded_while_audit_records_wait_for_a_frozen_jetstream(tmp_path, nats_server, monkeypatch):
    monkeypatch.setattr(controlplane.app, "AUDIT_WAIT_DEGRADED_S", 1.0)
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
            metrics = client.get("/metrics").text
            assert "groqpolicy_audit_backlog 3.0" in metrics
            assert "groqpolicy_audit_backlog_oldest_seconds 0.0" not in metrics
        health = _until(lambda: (h := client.get("/health").json())["status"] == "ok" and h, 30, "ok again")
        assert health["audit"] == {"waiting": 0, "oldest_waiting_s": 0.0}
