"""The product's processes on authenticated NATS: the embedded server of a lone control plane refuses
anonymous clients and is bootstrapped before the control plane connects; a worker process presents
its role's key (and says so in one line when refused); the CLI asks `policy.evaluate` as the tool
identity; what a skipped bootstrap leaves missing is reported, not a hang."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time

import httpx
import nkeys
import pytest

from bridge.inference.cache import KVCache
from bridge.inference.connect import NatsCredentialRefused, connect
from bridge.kernel.config import NatsSettings, Settings
from bridge.kernel.errors import ConfigError
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit.stream import AuditStream
from controlplane.infra.nats import NatsConnection
from controlplane.infra.natsauth import bootstrap
from controlplane.infra.processes import start_nats
from controlplane.services import jetstream_steps
from tests.bridge_helpers import Emu, spawn_worker, wait_for_workers
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane
from tests.nats_auth_helpers import Key, start_auth_nats

pytestmark = pytest.mark.slow
FAST = 0.5


async def test_a_lone_control_plane_starts_an_authenticated_bootstrapped_server(tmp_path, nats_bin):
    settings = Settings(state_dir=tmp_path / "state")
    conn = NatsConnection(settings, NatsSettings(), bootstrap_steps=jetstream_steps(settings))
    nc = await conn.connect()
    try:
        assert conn.connected and conn.embedded is not None
        with pytest.raises(NatsCredentialRefused, match="anonymous"):
            await connect(conn.url, role="tool", settings=NatsSettings(connect_timeout_s=5))
        js = nc.jetstream(timeout=2)  # the controlplane identity reads what the bootstrap created
        assert (await js.stream_info("GROQPOLICY_AUDIT")).config.deny_purge
        assert (await js.stream_info("KV_groqpolicy_policies")).config.name == "KV_groqpolicy_policies"
    finally:
        await conn.close()
    assert conn.embedded is None and not conn.connected


async def test_an_outage_is_logged_and_our_own_close_is_not(tmp_path, nats_bin, caplog):
    """"disconnected; reconnecting (calls ... answer 503 meanwhile)" is for an outage: a stop's own
    close said it too, the last line of every control plane's log, as if NATS had gone."""
    server = start_nats(tmp_path / "nats")
    try:
        with caplog.at_level(logging.WARNING, logger="controlplane.infra.nats"):
            conn = NatsConnection(make_settings(tmp_path / "a", nats_url=server.extra["url"]))
            await conn.connect()
            await conn.close()
            assert "disconnected" not in caplog.text
            conn = NatsConnection(make_settings(tmp_path / "b", nats_url=server.extra["url"]))
            await conn.connect()
            try:
                server.kill()
                deadline = time.monotonic() + 10
                while "disconnected" not in caplog.text:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert f"NATS: disconnected from {server.extra['url']}; reconnecting" in caplog.text
            finally:
                await conn.close()
    finally:
        server.stop()


async def test_what_a_skipped_bootstrap_leaves_missing_is_reported(tmp_path, nats_bin, caplog):
    server, auth = start_auth_nats(tmp_path)  # no bootstrap: no stream and no bucket exists
    url = server.extra["url"]
    try:
        worker = await connect(url, role="worker", settings=auth.credential("worker"))
        with caplog.at_level(logging.WARNING, logger="groqpolicy.cache"):
            assert await KVCache.open(worker.jetstream(timeout=FAST)) is None  # serves without L2
        assert "serving without the shared L2 cache" in caplog.text
        await worker.close()
        cp = await connect(url, role="controlplane", settings=auth.credential("controlplane"))
        with pytest.raises(ConfigError, match=r"audit stream GROQPOLICY_AUDIT is missing.*run the bootstrap"):
            await AuditStream(cp, timeout=FAST).ensure()
        await cp.close()
    finally:
        server.stop()


def test_a_worker_process_presents_its_key_and_a_refused_one_says_so(tmp_path, nats_bin):
    server, auth = start_auth_nats(tmp_path)
    url = server.extra["url"]
    asyncio.run(bootstrap(url, auth, jetstream_steps(Settings())))
    emu = Emu()
    worker = spawn_worker(url, emu.url, tmp_path / "worker.log", GROQPOLICY_NATS_NKEY=str(auth.seed_file("worker")))
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(Key(nkeys.PREFIX_BYTE_USER).seed)  # a well-formed user seed the server does not know
    stranger.chmod(0o600)
    try:
        found = asyncio.run(wait_for_workers(url, 1, credential=auth.credential("ops")))
        assert found[0]["name"] == "groqpolicy-inference"
        assert "serving without" not in (tmp_path / "worker.log").read_text()  # the bootstrap made its bucket
        refused = spawn_worker(url, emu.url, tmp_path / "refused.log", GROQPOLICY_NATS_NKEY=str(stranger))
        assert refused.wait(timeout=30) == 1
        text = (tmp_path / "refused.log").read_text()
        assert f"error: NATS at {url}: the server refused the nkey in {stranger}" in text, text
        assert "Traceback" not in text
    finally:
        worker.kill()
        worker.wait()
        emu.stop()
        server.stop()


def test_the_cli_refuses_an_unknown_key_in_one_line_with_a_hint(tmp_path, nats_bin):
    server, _ = start_auth_nats(tmp_path)
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(Key(nkeys.PREFIX_BYTE_USER).seed)
    stranger.chmod(0o600)
    try:
        r = subprocess.run([sys.executable, "-m", "controlplane.ops.cli", "evaluate", "--via", "nats", "--nats-url",
                            server.extra["url"], "--context", "{}"], capture_output=True, text=True, cwd=REPO_ROOT,
                           env={"PATH": "/usr/bin:/bin", "GROQPOLICY_NATS_NKEY": str(stranger)}, timeout=60)
    finally:
        server.stop()
    first, hint = r.stderr.strip().splitlines()
    assert r.returncode == 1
    assert first.startswith(f"error: NATS at {server.extra['url']}: the server refused the nkey in {stranger}")
    assert hint.startswith(f"hint: this command presented the nkey in {stranger}; `groqpolicy up` makes a tool identity")


def test_while_nats_is_down_the_control_plane_says_503_with_retry_after_and_reconnects(tmp_path, nats_bin):
    server = start_nats(tmp_path / "nats")
    port = server.extra["port"]
    settings = make_settings(tmp_path / "state", nats_url=server.extra["url"])
    try:
        with running_control_plane(settings), httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS,
                                                           timeout=30) as client:
            assert client.get("/health").json()["nats"] is True
            server.kill()
            _until(lambda: (health := client.get("/health").json())["nats"] is False and health["status"] == "degraded")
            r = client.post("/api/v1/groq/inference", json={"model_name": "openai/gpt-oss-20b", "prompt": "hello"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            r = client.post("/api/v1/evaluate", json={"input_context": {"principal": {"id": "alice"}},
                                                      "constitutional_hash": CONSTITUTIONAL_HASH})
            assert r.status_code == 200  # decisions go on: their audit records wait in the spool
            server = start_nats(tmp_path / "nats", port=port)  # the same server comes back
            _until(lambda: client.get("/health").json()["nats"] is True)
            assert client.get("/health").json()["status"] == "ok"
    finally:
        server.stop()


def _until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)
