"""schemathesis against `/schema/openapi.json` of a running control plane (real NATS, a real worker on
the emulator): generated requests to the policies, evaluation, Groq and OPA endpoints must never get a
5xx and every response must match the schema it is documented with. Bounded examples per operation."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("schemathesis")

from tests.bridge_helpers import Emu, spawn_worker, wait_for_workers
from tests.controlplane_helpers import ADMIN_TOKEN, make_settings, running_control_plane
from tests.schemathesis_check import run_in_subprocess

pytestmark = pytest.mark.slow
MY_PATHS = r"^/api/v1/(policies|evaluate|groq/|opa/evaluate)"


@pytest.fixture(scope="module")
def api_base_url(tmp_path_factory, nats_server_module):
    url = nats_server_module.extra["url"]
    tmp = tmp_path_factory.mktemp("schema")
    emu = Emu()
    worker = spawn_worker(url, emu.url, tmp / "worker.log")
    try:
        asyncio.run(wait_for_workers(url, 1))
        cp_settings = make_settings(tmp / "state", compile_on_start=True, nats_url=url, rate_limit="off")
        with running_control_plane(cp_settings):
            yield cp_settings.base_url
    finally:
        worker.kill()
        worker.wait()
        emu.stop()


def test_no_server_errors_and_responses_match_the_schema(api_base_url):
    report = run_in_subprocess(api_base_url, MY_PATHS, 6, ADMIN_TOKEN)
    assert len(report["seen"]) >= 10, report["seen"]
    assert not report["failures"], "\n\n".join(report["failures"])
