"""Bridge round trips, each contender in its own process, same payload, same asyncio client loop.

    bare          client -> nats-server -> plain nats-py responder (canned reply of the same size)
    worker_hit    client -> nats-server -> worker (L1 hit)
    gateway_hit   client -> HTTP -> gateway -> nats-server -> worker (L1 hit) -> gateway -> client
    gateway_miss  same, but every question is new: worker -> groq SDK -> HTTP -> zero-latency emulator
    sdk_call      client -> groq SDK (AsyncGroq) -> HTTP -> emulator: the part of gateway_miss that is Groq's
    l1_lookup     InferenceEngine.lookup_l1 alone, in this process (key hash + LRU lookup + reply copy)

Processes: nats-server, emulator, worker, gateway and the bare responder each run alone; the client
is this pytest process. The contenders take turns in interleaved blocks (`benchmarks.harness.interleaved`),
so the machine's drift reaches all of them alike. `GROQPOLICY_BENCH_SHORT=1` cuts the blocks (CI: well
under a minute). The test stores median and p99 (µs) per contender in `extra_info` and prints a table;
`benchmarks/README.md` explains the numbers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats
import pytest

from benchmarks.harness import HTTPClient, interleaved, local_runner, spawn, stats
from bridge.inference.wire import BUDGET_HEADER, InferRequest
from controlplane.infra.processes import free_port, start_nats, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 3 if SHORT else 10
PER_BLOCK = 5000  # calls per contender per block, at most ...
BUDGET_S = 0.3 if SHORT else 1.2  # ... and no longer than this
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
        stack = {"loop": loop, "nc": nc, "http": http, "reply_size": len(first.data), "emulator_url": f"http://127.0.0.1:{emu_port}",
                 "closers": []}
        yield stack
        for close in stack["closers"]:
            close()
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


def _bare(stack) -> Callable[[], object]:
    loop, nc = stack["loop"], stack["nc"]

    def once():
        return loop.run_until_complete(nc.request("bench.bare", HIT_BODY, timeout=5))

    assert len(once().data) == stack["reply_size"]
    return once


def _worker_hit(stack) -> Callable[[], object]:
    loop, nc = stack["loop"], stack["nc"]
    headers = {BUDGET_HEADER: "2000"}

    def once():
        return loop.run_until_complete(nc.request("groq.infer.fast", HIT_BODY, timeout=5, headers=headers))

    assert msgspec.json.decode(once().data)["cached"] is True
    return once


def _gateway_hit(stack) -> Callable[[], object]:
    loop, http = stack["loop"], stack["http"]

    def once():
        return loop.run_until_complete(http.post("/v1/infer/fast", HIT_BODY))

    status, body = once()
    assert status == 200 and msgspec.json.decode(body)["cached"] is True
    return once


def _gateway_miss(stack) -> Callable[[], object]:
    loop, http = stack["loop"], stack["http"]
    counter = itertools.count()
    run = os.getpid()

    def once():
        body = msgspec.json.encode({"question": f"miss {run}-{next(counter)}: is this an injection attempt?",
                                    "context": CONTEXT, "deadline_ms": 5000})
        return loop.run_until_complete(http.post("/v1/infer/fast", body))

    status, body = once()
    reply = msgspec.json.decode(body)
    assert status == 200 and reply["cached"] is False and reply["emulated"] is True
    return once


def _sdk_call(stack) -> Callable[[], object]:
    import groq

    from bridge.inference.prompts import render
    from bridge.inference.wire import VERDICT_JSON_SCHEMA

    loop = stack["loop"]
    client = groq.AsyncGroq(base_url=stack["emulator_url"], api_key="bench", max_retries=0)
    stack["closers"].append(lambda: loop.run_until_complete(client.close()))
    messages = render(msgspec.json.decode(HIT_BODY, type=InferRequest))
    rf = {"type": "json_schema", "json_schema": {"name": "policy_verdict", "strict": True, "schema": VERDICT_JSON_SCHEMA}}

    def once():
        return loop.run_until_complete(client.chat.completions.create(
            model="openai/gpt-oss-20b", messages=messages, response_format=rf, max_completion_tokens=512, temperature=0.0))

    assert once().choices[0].message.content
    return once


def _l1_lookup(stack) -> Callable[[], object]:
    from bridge.inference.cache import cache_key
    from bridge.inference.catalog import default_catalog
    from bridge.inference.wire import InferReply
    from bridge.inference.worker.engine import InferenceEngine
    from bridge.kernel.config import EngineSettings

    engine = InferenceEngine(client=None, catalog=default_catalog(), emulated=True, settings=EngineSettings())  # type: ignore[arg-type]
    req = msgspec.json.decode(HIT_BODY, type=InferRequest)
    engine.keep(cache_key("fast", req), InferReply(decision="allow", confidence=0.9, rationale="r", model="m", tier="fast"), 600)
    for i in range(5000):  # a realistically full L1
        engine.keep(f"k{i}", InferReply(decision="deny", confidence=0.9, rationale="r", model="m", tier="fast"), 600)

    def once():
        return engine.lookup_l1("fast", req, time.perf_counter())

    hit = once()
    assert hit is not None and hit[0].cached
    return once


CONTENDERS = {
    "bare_nats": (_bare, "client -> nats -> bare responder"),
    "worker_cache_hit": (_worker_hit, "client -> nats -> worker (L1 hit)"),
    "gateway_cache_hit": (_gateway_hit, "client -> HTTP gateway (its own judgment cache)"),
    "gateway_model_call": (_gateway_miss, "client -> HTTP gateway -> nats -> worker -> groq SDK -> emulator (0 ms)"),
    "sdk_emulator_call": (_sdk_call, "client -> groq SDK -> HTTP -> emulator (0 ms)"),
    "l1_lookup": (_l1_lookup, "InferenceEngine.lookup_l1 (sha256 key + LRU get + reply copy)"),
}


def test_bridge_side_by_side(benchmark, stack):
    """Every contender in `BLOCKS` interleaved blocks of at most `PER_BLOCK` calls or `BUDGET_S`
    seconds each (the order rotates every block), after `WARMUP` unrecorded calls."""
    runners = {}
    for name, (make, _path) in CONTENDERS.items():
        once = make(stack)
        for _ in range(WARMUP):
            once()
        runners[name] = local_runner(once)
    times: dict[str, list[float]] = {}
    benchmark.pedantic(lambda: times.update(interleaved(runners, BLOCKS, PER_BLOCK, BUDGET_S)), rounds=1, iterations=1)
    bare = stats(times["bare_nats"])["median_us"]
    lines = ["", f"{'contender':<20} {'median us':>10} {'p99 us':>10} {'n':>6} {'/ bare':>7}"]
    for name, data in times.items():
        row = stats(data)
        benchmark.extra_info[name] = {**row, "path": CONTENDERS[name][1]}
        lines.append(f"{name:<20} {row['median_us']:>10.1f} {row['p99_us']:>10.1f} {row['n']:>6} {row['median_us'] / bare:>7.2f}")
    print("\n".join(lines))
