"""What sharing evaluation jobs in JetStream costs against the state-directory files it replaced, on
a real nats-server (loopback, file storage): the three operations a job does.

- `status read`: `GET /jobs/{id}` on a process that is not the runner (`SharedJobs.get`: KV get +
  decode) beside the file read + decode the single process did (`JobStore` file).
- `heartbeat write`: the runner's compare-and-set write of its job, every second per job, beside the
  file store's atomic fsync'd replace.
- `results 10,000`: a 10,000-context job's NDJSON written then read back (object store put + get,
  chunked, into a file as the results endpoint serves it) beside the file write (fsync) + read.

The contenders alternate in blocks (shared, file, shared, ...), so both see the same machine state;
times per call in ms, median and p99, land in `extra_info` and the table printed at the end.
`GROQPOLICY_BENCH_SHORT=1` runs a fifth of the blocks.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import nats
import pytest

from controlplane.evaljobs.schemas import Job
from controlplane.evaljobs.shared import SharedJobs
from controlplane.evaljobs.store import JobStore
from controlplane.infra.processes import start_nats

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = {"status read": 20, "heartbeat write": 20, "results 10,000": 6}
PER_BLOCK = {"status read": 50, "heartbeat write": 20, "results 10,000": 1}
RESULTS: dict[tuple[str, str], dict[str, float]] = {}
# a line the size of an EvaluateResponse with two policy results (about 1.1 KB)
LINE = msgspec.json.encode({"evaluation_id": "0" * 36, "decision": "allow", "confidence": 0.93, "policy_results": [
    {"name": f"policy-{i}", "decision": "allow", "reasons": ["within the principal's limit"] * 3, "model_calls": 1}
    for i in range(2)], "constitutional_compliance": {"compliant": True, "violations": []},
    "performance_metrics": {"latency_ms": 12.5, "model_calls": 1, "cached": False}, "pad": "x" * 500}) + b"\n"


def _job() -> Job:
    return Job(id=uuid.uuid4().hex, state="running", via="batch", performance_tier="fast", policy_types=[],
               contexts=10_000, created_at=time.time(), heartbeat_at=time.time(), batches=["batch_x"] * 3)


async def _contenders(nc: nats.NATS, tmp: Path) -> dict[str, dict[str, Callable[[], Awaitable[object]]]]:
    shared, files = await SharedJobs.open(nc), JobStore(tmp)
    files.dir.mkdir(parents=True, exist_ok=True)
    job = _job()
    await shared.save(job)
    files.save(job)
    ndjson = LINE * 10_000
    decode = msgspec.json.Decoder(Job)

    async def shared_results() -> bytes:
        await shared.write_results(job.id, ndjson)
        await shared.results(job.id, tmp / "download")
        return (tmp / "download").read_bytes()

    def file_results() -> bytes:
        path = files.results_path(job.id)
        with open(path, "wb") as fh:
            fh.write(ndjson)
            fh.flush()
            os.fsync(fh.fileno())
        return path.read_bytes()

    async def in_thread(fn: Callable[[], object]) -> object:
        return await asyncio.to_thread(fn)

    return {
        "status read": {"shared": lambda: shared.get(job.id),
                        "file": lambda: in_thread(lambda: decode.decode(files.results_path(job.id).with_suffix(".json")
                                                                        .read_bytes()))},
        "heartbeat write": {"shared": lambda: shared.save(job), "file": lambda: in_thread(lambda: files.save(job))},
        "results 10,000": {"shared": shared_results, "file": lambda: in_thread(file_results)},
    }


async def _interleaved(url: str, tmp: Path, op: str) -> dict[str, list[float]]:
    nc = await nats.connect(url)
    try:
        contenders = (await _contenders(nc, tmp))[op]
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(max(2, BLOCKS[op] // (5 if SHORT else 1))):
            for name, call in contenders.items():
                for _ in range(PER_BLOCK[op]):
                    t0 = time.perf_counter_ns()
                    await call()
                    times[name].append((time.perf_counter_ns() - t0) / 1e6)
        return times
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    server = start_nats(tmp_path_factory.mktemp("nats"))
    try:
        yield server.extra["url"]
    finally:
        server.stop()


@pytest.mark.parametrize("op", list(BLOCKS))
def test_shared_beside_files(benchmark, nats_url, tmp_path, op):
    times: dict[str, list[float]] = {}
    benchmark.pedantic(lambda: times.update(asyncio.run(_interleaved(nats_url, tmp_path, op))), rounds=1, iterations=1)
    for name, samples in times.items():
        ordered = sorted(samples)
        RESULTS[(op, name)] = {"median_ms": round(statistics.median(ordered), 3),
                               "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                               "n": len(ordered)}
    benchmark.extra_info.update({f"{name}_{k}": v for name in times for k, v in RESULTS[(op, name)].items()})
    benchmark.extra_info["loadavg"] = os.getloadavg()


def teardown_module() -> None:
    if not RESULTS:
        return
    print(f"\nload average {os.getloadavg()}; results: {len(LINE) * 10_000:,} bytes")
    print("| operation | JetStream median / p99 ms | file median / p99 ms | ratio (medians) | calls each |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for op in BLOCKS:
        shared, file = RESULTS.get((op, "shared")), RESULTS.get((op, "file"))
        if shared and file:
            print(f"| {op} | {shared['median_ms']} / {shared['p99_ms']} | {file['median_ms']} / {file['p99_ms']} | "
                  f"{shared['median_ms'] / file['median_ms']:.2f} | {shared['n']} |")
