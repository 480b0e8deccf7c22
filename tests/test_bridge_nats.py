"""Gateway -> NATS -> worker(s) -> groq SDK -> emulator, all real: nats-server, HTTP, micro services."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import nats
import pytest

from bridge.emulator import ModelBehaviour
from bridge.inference.wire import BUDGET_HEADER
from bridge.kernel.vocabulary import ROUTABLE_TIERS, TIERS
from tests.bridge_helpers import BRIDGE_HEADERS, BRIDGE_TOKEN, Emu, fast_settings, gateway_on, post, worker_on

FAST = "openai/gpt-oss-20b"


@pytest.fixture
def nats_url(nats_server) -> str:
    return nats_server.extra["url"]


async def test_micro_discovery(nats_url, emu: Emu):
    async with worker_on(nats_url, emu):
        nc = await nats.connect(nats_url)
        try:
            ping = msgspec.json.decode((await nc.request("$SRV.PING.groqpolicy-inference", b"", timeout=2)).data)
            assert ping["name"] == "groqpolicy-inference" and ping["type"] == "io.nats.micro.v1.ping_response"
            info = msgspec.json.decode((await nc.request("$SRV.INFO.groqpolicy-inference", b"", timeout=2)).data)
            assert sorted(e["subject"] for e in info["endpoints"]) == sorted(f"groq.infer.{t}" for t in ROUTABLE_TIERS)
            assert {e["queue_group"] for e in info["endpoints"]} == {"groq-infer"}
            assert info["metadata"]["emulated"] == "true"
            r = await nc.request("groq.infer.fast", b'{"question": "ok?"}', timeout=2)
            assert msgspec.json.decode(r.data)["decision"] == "allow" and r.headers["Groqpolicy-Max-Age"] == "600"
            bad = await nc.request("groq.infer.fast", b'{"question": 3}', timeout=2)
            assert bad.headers["Nats-Service-Error-Code"] == "422"
            assert msgspec.json.decode(bad.data)["error"]["message"] == "request: Expected `str`, got `int` - at `$.question`"
            stats = msgspec.json.decode((await nc.request("$SRV.STATS.groqpolicy-inference", b"", timeout=2)).data)
            fast = next(e for e in stats["endpoints"] if e["name"] == "fast")
            assert fast["num_requests"] == 2
            assert fast["data"]["model_calls"] == 1 and fast["data"]["errors"] == 1 and fast["data"]["emulated"] is True
        finally:
            await nc.close()


async def test_gateway_round_trip_and_l1_cache(nats_url, emu: Emu):
    async with worker_on(nats_url, emu) as w, gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        body = {"question": "does this hold personal data?", "context": {"record": {"name": "Ada"}}, "policy": "data_governance",
                "constitutional_hash": "cdd01ef066bc6cf2", "deadline_ms": 2000}
        r1 = await post(c, gw.url, "balanced", body)
        assert r1.status_code == 200 and r1.headers["cache-control"] == "max-age=300"
        a = r1.json()
        assert (a["decision"], a["tier"], a["model"], a["cached"], a["emulated"]) == ("allow", "balanced", "qwen/qwen3.6-27b", False, True)
        assert set(a["usage"]) >= {"prompt_tokens", "completion_tokens", "queue_time", "prompt_time", "completion_time", "total_time"}
        r2 = await post(c, gw.url, "balanced", {**body, "deadline_ms": 900})  # the deadline is not part of the key
        assert r2.json()["cached"] is True and r2.json()["decision"] == "allow"
        assert r2.headers["cache-control"].startswith("max-age=")
        # answered by the gateway's own copy: no NATS round trip, no second model call
        assert emu.calls() == 1 and gw.server.config.app.counts["cache_hits"] == 1 and w.engine.counters.l1_hits == 0


async def test_gateway_without_its_cache_gets_hits_from_the_worker_l1(nats_url, emu: Emu):
    async with worker_on(nats_url, emu) as w, gateway_on(nats_url, cache_size=0) as gw, httpx.AsyncClient() as c:
        body = {"question": "does this hold personal data?", "context": {"n": 1}, "deadline_ms": 2000}
        assert (await post(c, gw.url, "fast", body)).json()["cached"] is False
        again = (await post(c, gw.url, "fast", body)).json()
        assert again["cached"] is True and emu.calls() == 1 and w.engine.counters.l1_hits == 1


async def test_gateway_never_keeps_a_fail_closed_reply(nats_url, emu: Emu):
    async with worker_on(nats_url, emu), gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        body = {"question": "q [[groq-emulator:schema_violation]]", "context": {}, "deadline_ms": 3000}
        first = await post(c, gw.url, "nano", body)
        assert first.json()["decision"] == "review" and first.headers["cache-control"] == "max-age=0"
        await post(c, gw.url, "nano", body)
        assert gw.server.config.app.counts["cache_hits"] == 0


@pytest.mark.parametrize(
    "tier, content, status, code",
    [
        ("bogus", b'{"question": "q"}', 404, "unknown_tier"),
        ("fast", b"{not json", 400, "invalid_json"),
        ("fast", b'{"question": ["q"]}', 422, "invalid_request"),
        ("fast", b'{"question": "q", "constitutional_hash": "0000"}', 422, "constitutional_hash_mismatch"),
        ("fast", b'{"question": "q", "deadline_ms": -5}', 422, "bad_deadline"),
        ("fast", b'{"question": "q", "max_tokens": 0}', 422, "bad_max_tokens"),
        ("fast", b'{"question": "q", "temperature": 2.5}', 422, "bad_temperature"),
        ("fast", b'{"question": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
        ("fast", b'{"question": "q", "model": "gpt-9"}', 422, "model_not_found"),
    ],
)
async def test_gateway_rejects_bad_input(nats_url, emu: Emu, tier, content, status, code):
    async with worker_on(nats_url, emu), gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        r = await c.post(f"{gw.url}/v1/infer/{tier}", content=content,
                         headers={"content-type": "application/json", **BRIDGE_HEADERS})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code and set(r.json()["error"]) == {"message", "type", "code"}
        assert r.headers["cache-control"] == "no-store"
    assert emu.calls() == 0


async def test_alias_through_gateway(nats_url, emu: Emu):
    async with worker_on(nats_url, emu), gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        r = await post(c, gw.url, "premium", {"question": "q", "model": "moonshotai/kimi-k2-instruct"})
        a = r.json()
        assert (a["model"], a["requested_model"], a["resolved_from"]) == ("openai/gpt-oss-120b", "moonshotai/kimi-k2-instruct", "moonshotai/kimi-k2-instruct")


async def test_l2_cache_is_shared_across_workers(nats_url, emu: Emu):
    async with gateway_on(nats_url, cache_size=0) as gw, httpx.AsyncClient() as c:  # the workers' caches alone
        async with worker_on(nats_url, emu):
            r1 = await post(c, gw.url, "fast", {"question": "shared?", "context": [1, 2, 3]})
            assert r1.json()["cached"] is False
            await asyncio.sleep(0.1)  # the L2 write is fire-and-forget
        async with worker_on(nats_url, emu) as b:
            r2 = await post(c, gw.url, "fast", {"question": "shared?", "context": [1, 2, 3]})
            assert r2.status_code == 200 and r2.json()["cached"] is True and r2.json()["decision"] == r1.json()["decision"]
            assert b.engine.counters.l2_hits == 1 and emu.calls() == 1
            r3 = await post(c, gw.url, "fast", {"question": "shared?", "context": [1, 2, 3]})
            assert r3.json()["cached"] is True and b.engine.counters.l1_hits == 1  # promoted to L1


async def test_two_workers_share_load(nats_url, emu: Emu):
    emu.app.config.default = ModelBehaviour(latency_ms=20)
    async with worker_on(nats_url, emu) as a, worker_on(nats_url, emu) as b, gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        rs = await asyncio.gather(*(post(c, gw.url, "fast", {"question": f"q{i}"}) for i in range(40)))
        assert [r.status_code for r in rs] == [200] * 40
        assert a.served > 0 and b.served > 0 and a.served + b.served == 40


async def test_no_worker_is_503_fast(nats_url):
    async with gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        t0 = time.perf_counter()
        r = await post(c, gw.url, "fast", {"question": "anyone?", "deadline_ms": 1000})
        assert r.status_code == 503 and time.perf_counter() - t0 < 1.0
        assert r.json()["error"]["code"] == "no_worker"
        assert r.json()["error"]["message"] == "groq.infer.fast: no inference worker is serving tier 'fast'"


async def test_slow_model_is_504_within_the_deadline(nats_url, emu: Emu):
    emu.app.config.default = ModelBehaviour(latency_ms=3000)
    async with worker_on(nats_url, emu), gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        t0 = time.perf_counter()
        r = await post(c, gw.url, "fast", {"question": "slow?", "deadline_ms": 400})
        elapsed = time.perf_counter() - t0
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert 0.3 < elapsed < 0.4 + 0.25  # the deadline, plus slack for a loaded CI box


async def test_worker_reads_the_budget_header(nats_url, emu: Emu):
    emu.app.config.default = ModelBehaviour(latency_ms=3000)
    async with worker_on(nats_url, emu):
        nc = await nats.connect(nats_url)
        try:
            t0 = time.perf_counter()
            r = await nc.request("groq.infer.fast", b'{"question": "slow?"}', timeout=5, headers={BUDGET_HEADER: "250"})
            assert r.headers["Nats-Service-Error-Code"] == "504" and time.perf_counter() - t0 < 0.25 + 0.15
        finally:
            await nc.close()


async def test_serve_gateway_in_this_loop(nats_url, emu: Emu):
    from bridge.inference.gateway import serve_gateway
    from controlplane.infra.processes import free_port

    port = free_port()
    async with worker_on(nats_url, emu):
        server = await serve_gateway(nats_url, port=port, token=BRIDGE_TOKEN)
        try:
            async with httpx.AsyncClient() as c:
                health = await c.get(f"http://127.0.0.1:{port}/health")
                assert health.json()["status"] == "ok" and health.json()["nats"] is True
                r = await post(c, f"http://127.0.0.1:{port}", "nano", {"question": "in-loop?"})
                assert r.status_code == 200 and r.json()["model"] == "allam-2-7b"
                models = (await c.get(f"http://127.0.0.1:{port}/v1/models")).json()["models"]
                assert {m["performance_tier"] for m in models} == set(TIERS)
                assert (await c.get(f"http://127.0.0.1:{port}/v1/infer/fast")).status_code == 405
                metrics = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
                assert "groqpolicy_gateway_requests_total 1\n" in metrics and "groqpolicy_gateway_ok_total 1\n" in metrics
        finally:
            await server.stop()


@pytest.mark.parametrize("fault", ["malformed", "schema_violation", "500", "json_validate_failed"])
async def test_unusable_model_output_reaches_the_caller_as_uncacheable_review(nats_url, emu: Emu, fault):
    async with worker_on(nats_url, emu), gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        r = await post(c, gw.url, "fast", {"question": f"judge this [[groq-emulator:{fault}]]", "deadline_ms": 3000})
        a = r.json()
        assert r.status_code == 200 and r.headers["cache-control"] == "max-age=0"
        assert (a["decision"], a["confidence"], a["degraded"], a["cached"]) == ("review", 0.0, True, False)
        # every candidate of the tier and of its fallback tier was tried (5xx twice each)
        assert {r.split(": ")[0] for r in a["reasons"]} == {FAST, "qwen/qwen3.6-27b", "qwen/qwen3.8-27b"}
        assert len(a["reasons"]) == (6 if fault == "500" else 3)


async def test_overloaded_worker_answers_503_at_once(nats_url, emu: Emu):
    emu.app.config.default = ModelBehaviour(latency_ms=300)
    async with worker_on(nats_url, emu, fast_settings(max_inflight=2)) as w, gateway_on(nats_url) as gw, \
            httpx.AsyncClient() as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(post(c, gw.url, "fast", {"question": f"busy {i}"}) for i in range(5)))
        statuses = sorted(r.status_code for r in rs)
        assert statuses == [200, 200, 503, 503, 503] and w.rejected == 3
        rejected = next(r for r in rs if r.status_code == 503)
        assert rejected.json()["error"]["code"] == "overloaded" and time.perf_counter() - t0 < 1.0


async def test_gateway_answers_every_refusal_with_the_error_body(nats_url):
    async with gateway_on(nats_url) as gw, httpx.AsyncClient() as c:
        r = await c.get(f"{gw.url}/v1/infer/fast")
        assert (r.status_code, r.headers["allow"], r.headers["cache-control"]) == (405, "POST", "no-store")
        assert r.json() == {"error": {"type": "invalid_request_error", "code": "method_not_allowed",
                                      "message": "GET /v1/infer/fast: method not allowed (want POST)"}}
        r = await c.post(f"{gw.url}/v2/infer/fast", json={"question": "q"})
        assert r.status_code == 404 and r.json()["error"] == {"type": "invalid_request_error", "code": "not_found",
                                                               "message": "POST /v2/infer/fast: not found"}

        async def broken(tier: str, body: bytes):
            raise RuntimeError("a bug")

        gw.server.config.app.client.request = broken  # a fault in the request path
        r = await post(c, gw.url, "fast", {"question": "q"})
        assert r.status_code == 500 and r.headers["cache-control"] == "no-store"
        rid = r.headers["x-request-id"]  # a 5xx names its request id (the gateway's log line has it too)
        assert r.json()["error"] == {"type": "internal_error", "code": "internal_error", "message": "gateway error: RuntimeError",
                                     "request_id": rid}
