"""schemathesis against the audit endpoints of a running control plane with records in the trail:
generated queries never get a 5xx and every response matches the schema it is documented with."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
import httpx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from controlplane.constitution import CONSTITUTIONAL_HASH  # noqa: E402
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane  # noqa: E402

PATHS = r"^/api/v1/audit"


def test_audit_endpoints_never_fail_and_match_their_schema(tmp_path, nats_server):
    cp = make_settings(tmp_path / "state", nats_url=nats_server.extra["url"], rate_limit="off")
    with running_control_plane(cp):
        with httpx.Client(base_url=cp.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
            for i in range(3):
                client.post("/api/v1/evaluate", json={"input_context": {"principal": f"p{i}"}, "policy_types": [],
                                                      "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH})
        schema = schemathesis.openapi.from_url(f"{cp.base_url}/schema/openapi.json").include(path_regex=PATHS)
        failures, seen = [], []
        for result in schema.get_all_operations():
            op = result.ok()
            seen.append(f"{op.method.upper()} {op.path}")

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
            @given(case=op.as_strategy())
            def run(case):
                case.call_and_validate(headers=ADMIN_HEADERS, checks=[not_a_server_error, response_schema_conformance])

            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report every operation's failure together
                failures.append(f"{seen[-1]}: {exc}")
        assert sorted(seen) == ["GET /api/v1/audit", "GET /api/v1/audit/verify"]
        assert not failures, "\n\n".join(failures)
