"""schemathesis against `/schema/openapi.json` of a running control plane (real NATS, a real worker on
the emulator): generated requests to the policies, evaluation, Groq and OPA endpoints must never get a
5xx and every response must match the schema it is documented with. Bounded examples per operation."""

from __future__ import annotations

import asyncio

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
# Imported at collection, not lazily inside the fixture: schemathesis is a pytest plugin, so pytest
# assertion-rewrites its modules on import, and CPython 3.11.7's ast.parse can fail ("AST constructor
# recursion depth mismatch") when that happens after hypothesis has changed the recursion limit.
from schemathesis.specs.openapi.schemas import OpenApiSchema  # noqa: E402, F401
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from tests.bridge_helpers import Emu, spawn_worker, wait_for_workers  # noqa: E402
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane  # noqa: E402

pytestmark = pytest.mark.slow
MY_PATHS = r"^/api/v1/(policies|evaluate|groq/|opa/evaluate)"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, nats_server_module):
    url = nats_server_module.extra["url"]
    tmp = tmp_path_factory.mktemp("schema")
    emu = Emu()
    worker = spawn_worker(url, emu.url, tmp / "worker.log")
    try:
        asyncio.run(wait_for_workers(url, 1))
        cp_settings = make_settings(tmp / "state", compile_on_start=True, nats_url=url, rate_limit="off")
        with running_control_plane(cp_settings):
            schema = schemathesis.openapi.from_url(f"{cp_settings.base_url}/schema/openapi.json")
            yield schema.include(path_regex=MY_PATHS)
    finally:
        worker.kill()
        worker.wait()
        emu.stop()


def test_no_server_errors_and_responses_match_the_schema(api_schema):
    # one hypothesis run per operation (schemathesis' own pytest plugin does not run under pytest 9)
    failures, seen = [], []
    for result in api_schema.get_all_operations():
        op = result.ok()
        seen.append(f"{op.method.upper()} {op.path}")

        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        @given(case=op.as_strategy())
        def run(case):
            case.call_and_validate(headers=ADMIN_HEADERS, checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, report them together
            failures.append(f"{seen[-1]}: {exc}")
    assert len(seen) >= 10, seen
    assert not failures, "\n\n".join(failures)
