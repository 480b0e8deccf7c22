"""Worker processes under a caller that retries: killing one mid-run loses nothing."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from bridge.emulator import ModelBehaviour
from tests.bridge_helpers import Emu, gateway_on, post, spawn_worker, wait_for_workers


async def call_with_retries(c: httpx.AsyncClient, url: str, i: int, retries: list[int]) -> httpx.Response:
    for attempt in range(6):
        r = await post(c, url, "fast", {"question": f"failover question {i}", "deadline_ms": 600})
        if r.status_code not in (503, 504):
            return r
        retries.append(i)
        await asyncio.sleep(0.05 * (attempt + 1))
    return r


@pytest.mark.slow
async def test_killing_a_worker_mid_run_loses_no_retried_request(nats_server, emu: Emu, tmp_path):
    url = nats_server.extra["url"]
    emu.app.config.default = ModelBehaviour(latency_ms=40)
    procs = [spawn_worker(url, emu.url, tmp_path / f"worker{n}.log") for n in range(2)]
    try:
        await wait_for_workers(url, 2)
        async with gateway_on(url) as gw, httpx.AsyncClient(timeout=10) as c:
            retries: list[int] = []
            sem = asyncio.Semaphore(12)
            done = 0

            async def one(i: int) -> httpx.Response:
                nonlocal done
                async with sem:
                    r = await call_with_retries(c, gw.url, i, retries)
                    done += 1
                    return r

            tasks = [asyncio.create_task(one(i)) for i in range(80)]
            while done < 20:
                await asyncio.sleep(0.01)
            procs[0].send_signal(signal.SIGKILL)
            results = await asyncio.gather(*tasks)
            assert [r.status_code for r in results] == [200] * 80
            assert {r.json()["decision"] for r in results} == {"allow"}
            assert retries, "the kill should have caught requests in flight"
            assert procs[0].wait(timeout=5) == -signal.SIGKILL
            await wait_for_workers(url, 1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
