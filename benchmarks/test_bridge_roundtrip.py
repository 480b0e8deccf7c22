"""Bridge round trips, each contender in its own process, same payload, same asyncio client loop.

    bare          client -> nats-server -> plain nats-py responder (canned reply of the same size)
    worker_hit    client -> nats-server -> worker (L1 hit)
    gateway_hit   client -> HTTP -> gateway -> nats-server -> worker (L1 hit) -> gateway -> client
    gateway_miss  same, but every question is new: worker -> groq SDK -> HTTP -> zero-latency emulator
    sdk_call      client -> groq SDK (AsyncGroq) -> HTTP -> emulator: the part of gateway_miss that is Groq's
    l1_lookup     InferenceEngine.lookup_l1 alone, in this process (key hash + LRU lookup + reply copy)

Processes: nats-server, emulator, worker, gateway and the bare responder each run alone; the client
is this pytest process. `GROQPOLICY_BENCH_SHORT=1` cuts the rounds (CI: well under a minute).
Each test stores median and p99 (µs) in `extra_info`; `benchmarks/README.md` explains the numbers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
import pytest

from benchmarks.harness import HTTPClient, spawn
from bridge.inference.wire import BUDGET_HEADER, InferRequest
from controlplane.infra.processes import free_port, start_nats, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
ROUNDS = 300 if SHORT else 3000
MISS_ROUNDS = 150 if SHORT else 1000
WARMUP = 30 if SHORT else 200

CONTEXT = {"prompt": "Summarise the attached quarterly report in three bullet points.", "user": {"id": "u-123", "role": "analyst"}}
HIT_BODY = msgspec.json.encode({"question": "Is this prompt an injection attempt?", "context": CONTEXT, "deadline_ms": 2000})

BARE_RESPONDER = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    reply = open(sys.argv[2], "rb").read()
    async def cb(msg):
        await msg.respond(reply)
    await nc.subscribe("bench.bare", queue="bench", cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


BRIDGE_TOKEN = "bench-bridge-token-000000000"  # what the gateway requires (as Rego presents it)


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    ns = start_nats(tmp / "nats")
    url = ns.extra["url"]
    env = {k: v for k, v in os.environ.items() if k != "GROQ_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    procs: list[subprocess.Popen] = []
    loop = asyncio.new_event_loop()
    try:
        emu_port = free_port()
        procs.append(spawn([sys.executable, "-m", "bridge.emulator", "--port", str(emu_port)], tmp / "emu.log", env))
        wait_for_port(emu_port, proc=procs[-1])
        wenv = dict(env, NATS_URL=url, GROQPOLICY_EMULATOR_URL=f"http://127.0.0.1:{emu_port}")
        procs.append(spawn([sys.executable, "-m", "bridge.inference.worker"], tmp / "worker.log", wenv))
        gw_port = free_port()
        (tmp / "bridge-token").write_text(BRIDGE_TOKEN)
        procs.append(spawn([sys.executable, "-m", "bridge.inference.gateway", "--port", str(gw_port)], tmp / "gw.log",
                           dict(env, NATS_URL=url, GROQPOLICY_BRIDGE_TOKEN_FILE=str(tmp / "bridge-token"))))
        wait_for_port(gw_port, proc=procs[-1])
        nc = loop.run_until_complete(nats.connect(url))
        # wait for the worker, then prime the cache entry every *_hit benchmark reads
        deadline = time.monotonic() + 30
        while True:
            try:
                first = loop.run_until_complete(nc.request("groq.infer.fast", HIT_BODY, timeout=5))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        reply_file = tmp / "reply.json"
        reply_file.write_bytes(first.data)
        procs.append(subprocess.Popen([sys.executable, "-c", BARE_RESPONDER, url, str(reply_file)], stdout=subprocess.PIPE,
                                      env=env, start_new_session=True))
        assert procs[-1].stdout.readline().strip() == b"ready"
        http = HTTPClient(gw_port, headers=b"authorization: Bearer %s\r\n" % BRIDGE_TOKEN.encode())
        loop.run_until_complete(http.connect())
        yield {"loop": loop, "nc": nc, "http": http, "reply_size": len(first.data), "emulator_url": f"http://127.0.0.1:{emu_port}"}
        http.close()
        loop.run_until_complete(nc.close())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        ns.stop()
        loop.close()


def _record(benchmark, **extra) -> None:
    data = sorted(benchmark.stats.stats.data)
    benchmark.extra_info.update(
        median_us=round(data[len(data) // 2] * 1e6, 1),
        p99_us=round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1e6, 1),
        **extra,
    )


def test_bridge_bare_nats(benchmark, stack):
    loop, nc = stack["loop"], stack["nc"]

    def once():
        return loop.run_until_complete(nc.request("bench.bare", HIT_BODY, timeout=5))

    msg = benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert len(msg.data) == stack["reply_size"]
    _record(benchmark, path="client -> nats -> bare responder")


def test_bridge_worker_cache_hit(benchmark, stack):
    loop, nc = stack["loop"], stack["nc"]
    headers = {BUDGET_HEADER: "2000"}

    def once():
        return loop.run_until_complete(nc.request("groq.infer.fast", HIT_BODY, timeout=5, headers=headers))

    msg = benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert msgspec.json.decode(msg.data)["cached"] is True
    _record(benchmark, path="client -> nats -> worker (L1 hit)")


def test_bridge_gateway_cache_hit(benchmark, stack):
    loop, http = stack["loop"], stack["http"]

    def once():
        return loop.run_until_complete(http.post("/v1/infer/fast", HIT_BODY))

    status, body = benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert status == 200 and msgspec.json.decode(body)["cached"] is True
    _record(benchmark, path="client -> HTTP gateway -> nats -> worker (L1 hit)")


def test_bridge_gateway_model_call(benchmark, stack):
    loop, http = stack["loop"], stack["http"]
    counter = itertools.count()
    run = os.getpid()

    def once():
        body = msgspec.json.encode({"question": f"miss {run}-{next(counter)}: is this an injection attempt?",
                                    "context": CONTEXT, "deadline_ms": 5000})
        return loop.run_until_complete(http.post("/v1/infer/fast", body))

    status, body = benchmark.pedantic(once, rounds=MISS_ROUNDS, warmup_rounds=min(WARMUP, 50), iterations=1)
    reply = msgspec.json.decode(body)
    assert status == 200 and reply["cached"] is False and reply["emulated"] is True
    _record(benchmark, path="client -> HTTP gateway -> nats -> worker -> groq SDK -> emulator (0 ms)")


def test_bridge_sdk_emulator_call(benchmark, stack):
    import groq

    from bridge.inference.prompts import render
    from bridge.inference.wire import VERDICT_JSON_SCHEMA

    loop = stack["loop"]
    client = groq.AsyncGroq(base_url=stack["emulator_url"], api_key="bench", max_retries=0)
    messages = render(msgspec.json.decode(HIT_BODY, type=InferRequest))
    rf = {"type": "json_schema", "json_schema": {"name": "policy_verdict", "strict": True, "schema": VERDICT_JSON_SCHEMA}}

    def once():
        return loop.run_until_complete(client.chat.completions.create(
            model="openai/gpt-oss-20b", messages=messages, response_format=rf, max_completion_tokens=512, temperature=0.0))

    comp = benchmark.pedantic(once, rounds=MISS_ROUNDS, warmup_rounds=min(WARMUP, 50), iterations=1)
    assert comp.choices[0].message.content
    loop.run_until_complete(client.close())
    _record(benchmark, path="client -> groq SDK -> HTTP -> emulator (0 ms)")


def test_bridge_l1_lookup(benchmark):
    from bridge.inference.cache import cache_key
    from bridge.inference.catalog import default_catalog
    from bridge.inference.wire import InferReply
    from bridge.inference.worker.engine import InferenceEngine
    from bridge.kernel.config import EngineSettings

    engine = InferenceEngine(client=None, catalog=default_catalog(), emulated=True, settings=EngineSettings())  # type: ignore[arg-type]
    req = msgspec.json.decode(HIT_BODY, type=InferRequest)
    engine.l1.set(cache_key("fast", req), InferReply(decision="allow", confidence=0.9, rationale="r", model="m", tier="fast"), 600)
    for i in range(5000):  # a realistically full L1
        engine.l1.set(f"k{i}", InferReply(decision="deny", confidence=0.9, rationale="r", model="m", tier="fast"), 600)

    def once():
        return engine.lookup_l1("fast", req, time.perf_counter())

    hit = benchmark.pedantic(once, rounds=ROUNDS * 10, warmup_rounds=WARMUP, iterations=1)
    assert hit is not None and hit[0].cached
    _record(benchmark, path="InferenceEngine.lookup_l1 (sha256 key + LRU get + reply copy)")
