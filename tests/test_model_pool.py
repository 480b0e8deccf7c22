"""One pooled connection per model: HTTP/2 streams over one connection to an emulator that speaks h2c
(served by hypercorn in its own process), calls bounded per model, a slot's wait inside the timeout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import groq
import httpx
import pytest

from bridge.inference.catalog import default_catalog
from bridge.inference.completion import completion_params
from bridge.inference.wire import InferRequest
from bridge.inference.worker.failures import failure_of
from bridge.inference.worker.pool import ModelPool, http_client
from bridge.kernel.config import EngineSettings
from controlplane.infra.processes import free_port, wait_for_port
from tests.bridge_helpers import REPO_ROOT

FAST = "openai/gpt-oss-20b"


@pytest.fixture(scope="module")
def h2c_emulator():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bridge.emulator", "--port", str(port), "--latency-ms", "50",
                             "--server", "hypercorn"], cwd=REPO_ROOT, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_concurrent_calls_share_one_http2_connection_within_the_bound(h2c_emulator):
    base = groq.AsyncGroq(base_url=h2c_emulator, api_key="k", max_retries=0)
    pool = ModelPool(base, default_catalog().models, EngineSettings(http2="prior-knowledge", model_concurrency=4))
    catalog = default_catalog()
    versions: list[str] = []
    most_waiting = 0

    async def one(i: int) -> None:
        nonlocal most_waiting
        async with pool.slot(FAST, 30):
            most_waiting = max(most_waiting, pool.waiting)
            raw = await pool.client(FAST).chat.completions.with_raw_response.create(
                **completion_params(catalog, FAST, "fast", InferRequest(question="q", context={"i": i})))
            versions.append(raw.http_response.http_version)

    try:
        await asyncio.gather(*(one(i) for i in range(12)))
        assert versions == ["HTTP/2"] * 12
        assert most_waiting > 0  # 12 calls, 4 slots: the rest waited for one
        assert pool.client(FAST) is pool.client(FAST) and pool.client(FAST) is not pool.client("allam-2-7b")
    finally:
        await pool.close()
        await base.close()


async def test_a_slot_that_does_not_free_up_in_time_is_a_timeout():
    base = groq.AsyncGroq(base_url="http://127.0.0.1:9", api_key="k", max_retries=0)
    pool = ModelPool(base, [FAST], EngineSettings(model_concurrency=1))
    async with pool.slot(FAST, 1):
        with pytest.raises(TimeoutError):
            async with pool.slot(FAST, 0.05):
                pass
    async with pool.slot(FAST, 0.05):  # released: free again
        pass
    await base.close()


async def test_auto_on_plain_http_stays_on_http11(h2c_emulator):
    # h2c needs prior knowledge; "auto" offers HTTP/2 only where TLS can negotiate it (GroqCloud)
    async with http_client(h2c_emulator, "auto", 4) as http:
        r = await http.get(f"{h2c_emulator}/openai/v1/models", headers={"authorization": "Bearer k"})
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"


def test_a_connection_the_server_closed_is_retried_without_blaming_the_model():
    request = httpx.Request("POST", "http://127.0.0.1:1/openai/v1/chat/completions")
    try:
        try:
            raise httpx.RemoteProtocolError("<ConnectionTerminated error_code:0, last_stream_id:2003>")
        except httpx.RemoteProtocolError as cause:
            raise groq.APIConnectionError(request=request) from cause
    except groq.APIConnectionError as exc:
        failure = failure_of(FAST, exc, 1.0)
    assert failure.retry and not failure.breaker
    assert str(failure) == f"{FAST}: connection closed by the server: <ConnectionTerminated error_code:0, last_stream_id:2003>"
