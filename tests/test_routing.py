"""Tier `auto`: the router's choice from context size, deadline against measured latency and schema
(unit, with a fake clock), then end to end through the engine and the real groq SDK against the
emulator, and through NATS (`groq.infer.auto`)."""

from __future__ import annotations

import re
import time
from collections import Counter

import msgspec
import pytest

from bridge.emulator import ModelBehaviour
from bridge.inference.catalog import default_catalog
from bridge.inference.client import InferClient
from bridge.inference.latency import MIN_SAMPLES, LatencyBook, from_buckets, summary
from bridge.inference.routing import Router, estimate_tokens
from bridge.inference.wire import InferRequest, InvalidInferRequest, decode_reply
from tests.bridge_helpers import Emu, engine_for, worker_on

SMALL = "allam-2-7b"  # nano's primary: a 4,096-token context window
FAST = "openai/gpt-oss-20b"
BIG = "openai/gpt-oss-120b"
QWEN = ("qwen/qwen3.6-27b", "qwen/qwen3.8-27b")


def book(measured: dict[str, float] | None = None) -> LatencyBook:
    """A latency book where each model in `measured` has MIN_SAMPLES calls of that many ms."""
    b = LatencyBook({m: s.typical_latency_ms for m, s in default_catalog().models.items()})
    for model, ms in (measured or {}).items():
        for _ in range(MIN_SAMPLES):
            b.record(model, ms)
    return b


def long_request(**kw) -> InferRequest:
    # about 5,000 tokens by the estimate: over allam-2-7b's window once its completion budget is added
    return InferRequest(question="does this document leak personal data?", context={"doc": "lorem ipsum " * 1300}, **kw)


def test_short_question_goes_to_the_fastest_tier_with_the_reason():
    route = Router(default_catalog(), book()).choose(InferRequest(question="ok?"), budget_ms=1500)
    assert route.tier == "nano" and route.models[0] == SMALL
    assert route.reason.startswith("nano: the fastest tier whose model fits ~")
    assert f"({SMALL}: 120 ms, catalog typical latency)" in route.reason


def test_long_context_and_tight_deadline_pick_a_model_that_fits_both():
    req = long_request()
    tokens = estimate_tokens(req)
    assert 4096 - 256 < tokens < 131072
    route = Router(default_catalog(), book()).choose(req, budget_ms=200)
    # allam's window is too small; qwen (300 ms) and gpt-oss-120b (250 ms) are too slow for 200 ms
    assert route.models == [FAST] and route.tier == "nano"
    assert f"{SMALL}: context window 4096 < ~{tokens + 256} tokens" in route.reason
    assert f"answers within 200 ms ({FAST}: 150 ms, catalog typical latency)" in route.reason
    assert route.estimated_tokens == tokens and route.budget_ms == 200


def test_the_deadline_is_held_against_measured_latency_not_the_catalog():
    # gpt-oss-20b measured slow (900 ms), qwen at its typical 300: in 250 ms only gpt-oss-120b (measured 180) fits
    route = Router(default_catalog(), book({FAST: 900, BIG: 180})).choose(
        long_request(), budget_ms=250)
    assert route.tier == "premium" and route.models == [BIG]
    assert re.search(rf"\({BIG}: 1[78]\d ms, measured p90 over {MIN_SAMPLES} calls\)", route.reason), route.reason
    assert re.search(rf"{FAST}: (89|90)\d ms \(measured p90 over {MIN_SAMPLES} calls\) over 250 ms", route.reason)
    assert f"{QWEN[0]}: 300 ms (catalog typical latency) over 250 ms" in route.reason


def test_strict_schema_needs_a_model_that_enforces_it():
    route = Router(default_catalog(), book()).choose(InferRequest(question="ok?", strict_schema=True), budget_ms=1500)
    assert route.models[0] == FAST and SMALL not in route.models and not set(QWEN) & set(route.models)
    assert f"{SMALL}: no strict JSON schema output" in route.reason and "with strict JSON schema" in route.reason


def test_nothing_in_time_keeps_the_fastest_that_fits_and_says_so():
    route = Router(default_catalog(), book()).choose(long_request(), budget_ms=50)
    assert route.models[0] == FAST
    assert route.reason.startswith("nano: no model is expected within 50 ms; the fastest that fits")


def test_no_model_fits_is_a_422_naming_every_model():
    req = InferRequest(question="q", context={"doc": "x" * 600_000})
    with pytest.raises(InvalidInferRequest) as exc:
        Router(default_catalog(), book()).choose(req, budget_ms=1500)
    assert exc.value.status == 422 and exc.value.code == "no_model_fits"
    assert f"{BIG}: context window 131072 < ~" in exc.value.message


def test_load_is_spread_over_the_models_of_a_tier():
    slow = {SMALL: 5000, FAST: 5000, "openai/gpt-oss-safeguard-20b": 5000}
    inflight: Counter[str] = Counter()
    router = Router(default_catalog(), book(slow), inflight)
    firsts = [router.choose(InferRequest(question="q"), budget_ms=1000).models[0] for _ in range(4)]
    assert sorted(firsts) == sorted([*QWEN, *QWEN])  # equal models take turns
    inflight[QWEN[0]] = 3
    assert {router.choose(InferRequest(question="q"), budget_ms=1000).models[0] for _ in range(4)} == {QWEN[1]}


def test_latency_books_merge_exactly_across_workers():
    a, b = LatencyBook({}), LatencyBook({})
    for ms in range(100, 200):
        a.record(FAST, ms)
        b.record(FAST, ms + 100)
    merged = summary(from_buckets([{int(k): c for k, c in x.snapshot()[FAST]["buckets"].items()} for x in (a, b)]))
    assert merged["count"] == 200 and 195 <= merged["p50_ms"] <= 205 and 290 <= merged["p99_ms"] <= 302


def test_the_window_forgets_a_model_that_was_slow_long_ago():
    now = [0.0]
    b = LatencyBook({FAST: 150.0}, window_s=60, clock=lambda: now[0])
    for _ in range(10):
        b.record(FAST, 2000)
    assert b.expected_ms(FAST)[0] > 1900
    now[0] = 200.0  # two whole windows later
    assert b.expected_ms(FAST) == (150.0, "catalog typical latency")


async def test_auto_through_the_engine_measures_and_routes(emu: Emu):
    emu.app.config.models[FAST] = ModelBehaviour(latency_ms=40)
    engine = engine_for(emu)
    started = time.perf_counter()
    reply, _ = await engine.infer("auto", long_request(), time.monotonic() + 5, started)
    assert reply.model == FAST and reply.decision == "allow"
    assert reply.route is not msgspec.UNSET and reply.tier == reply.route.tier == "nano"
    assert "context window 4096" in reply.route.reason and emu.calls(SMALL) == 0
    measured = engine.stats()["latency"][FAST]
    assert measured["count"] == 1 and measured["p50_ms"] >= 40  # the emulated 40 ms, plus whatever the machine adds


async def test_auto_over_nats_reaches_the_auto_endpoint(nats_server, emu: Emu):
    url = nats_server.extra["url"]
    async with worker_on(url, emu) as worker:
        client = InferClient(worker.nc, cache_size=0)
        body = msgspec.json.encode(InferRequest(question="ok?", strict_schema=True, deadline_ms=2000))
        status, data, _ = await client.request("auto", body)
    assert status == 200
    reply = decode_reply(data)
    assert reply.model == FAST and reply.route is not msgspec.UNSET and "strict JSON schema" in reply.route.reason
