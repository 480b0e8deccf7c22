"""schemathesis against the audit endpoints of a running control plane with records in the trail:
generated queries never get a 5xx and every response matches the schema it is documented with."""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis")
import httpx

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from tests.controlplane_helpers import ADMIN_HEADERS, ADMIN_TOKEN, make_settings, running_control_plane
from tests.schemathesis_check import run_in_subprocess

PATHS = r"^/api/v1/audit"


def test_audit_endpoints_never_fail_and_match_their_schema(tmp_path, nats_server):
    cp = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], rate_limit="off")
    with running_control_plane(cp):
        with httpx.Client(base_url=cp.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            for i in range(3):
                client.post("/api/v1/evaluate", json={"input_context": {"principal": f"p{i}"}, "policy_types": [],
                                                      "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH})
        report = run_in_subprocess(cp.base_url, PATHS, 25, ADMIN_TOKEN)
        assert sorted(report["seen"]) == ["GET /api/v1/audit", "GET /api/v1/audit/verify"]
        assert not report["failures"], "\n\n".join(report["failures"])
