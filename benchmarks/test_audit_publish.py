"""What the audit trail's appends cost nats-server and the writer, by how records go out: every group
as one atomic batch (`atomic_from=1`, the writer before this comparison) against the writer's
default (a queue shorter than `ATOMIC_FROM` one conditioned publish per record, a longer one in
atomic batches). One real nats-server, one trail with its spool, records submitted write-behind at
a fixed rate exactly as `/api/v1/evaluate` submits them.

Contenders take turns in blocks (`BLOCKS` rounds, each contender once per round, the order
alternating) at each rate; per contender and rate, the medians over blocks of:
- `nats_us_per_record`: nats-server's CPU (user + system, /proc) over the block / records stored;
- `writer_us_per_record`: this process's CPU over the block / records stored (submitting, the spool,
  sealing, signing and publishing; the same submit path for both contenders);
- `publishes_per_record` and the commits' mean size.
`GROQPOLICY_BENCH_SHORT=1`: 2 rounds of 1 s blocks.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import nats

from controlplane.audit import AuditRecord, AuditTrail
from controlplane.audit.spool import AuditSpool
from controlplane.audit.writer import ATOMIC_FROM
from controlplane.infra.processes import start_nats
from controlplane.infra.recordkeys import RecordKeys
from tests.controlplane_helpers import counted_publishes

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
BLOCKS = 2 if SHORT else 5
BLOCK_S = 1.0 if SHORT else 4.0
RATES = (200, 1000)
CONTENDERS = {"every_group_atomic": 1, "singles_below_atomic_from": ATOMIC_FROM}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _record(i: int) -> AuditRecord:
    # about the size of a rules-only evaluation's record (~700 bytes stored)
    return AuditRecord(source="api", decision="allow", evaluation_id=f"bench-{i}", performance_tier="nano",
                       policy_ids=["b4e92b75-5a32-43d0-a968-bb92103ee1de"], latency_ms=0.31, confidence_score=1.0,
                       bundle_revisions={"groqpolicy": "groqpolicy-13045874b3b6517b"}, input_sha256="0" * 64,
                       reasons=["risk score 20 is below the review threshold 40"])


async def _block(trail: AuditTrail, nats_pid: int, rate: int, start: int) -> dict[str, float]:
    """Submit records at `rate` for BLOCK_S, wait until stored; the block's costs per record."""
    n = int(rate * BLOCK_S)
    with counted_publishes(trail) as publishes:
        nats0, own0 = _cpu_s(nats_pid), time.process_time()
        due = time.perf_counter()
        for i in range(n):
            trail.submit([_record(start + i)])
            due += 1 / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await trail.flush(30)
    return {"nats_us_per_record": (_cpu_s(nats_pid) - nats0) / n * 1e6,
            "writer_us_per_record": (time.process_time() - own0) / n * 1e6,
            "publishes_per_record": len(publishes) / n, "records_per_publish": n / max(1, len(publishes))}


async def _run() -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    ns = start_nats(tmp / "nats")
    nc = await nats.connect(ns.extra["url"])
    trail = AuditTrail(nc, keys=RecordKeys.generate(), spool=AuditSpool(tmp / "spool"))
    await trail.ensure_stream()
    samples: dict[str, list[dict[str, float]]] = {}
    counter = 0
    try:
        for rate in RATES:
            for r in range(BLOCKS):
                order = list(CONTENDERS.items()) if r % 2 == 0 else list(CONTENDERS.items())[::-1]
                for name, atomic_from in order:
                    trail.atomic_from = atomic_from
                    samples.setdefault(f"{name}@{rate}/s", []).append(await _block(trail, ns.proc.pid, rate, counter))
                    counter += int(rate * BLOCK_S)
        assert (await trail.verify()).ok  # both ways of publishing leave one verifiable chain
    finally:
        await trail.close()
        await nc.close()
        ns.stop()
    return {key: {m: round(statistics.median(b[m] for b in blocks), 2) for m in blocks[0]} for key, blocks in samples.items()}


def test_audit_publish_costs_side_by_side(benchmark):
    results = asyncio.run(_run())
    for rate in RATES:
        atomic, singles = results[f"every_group_atomic@{rate}/s"], results[f"singles_below_atomic_from@{rate}/s"]
        total = {k: v["nats_us_per_record"] + v["writer_us_per_record"] for k, v in (("atomic", atomic), ("singles", singles))}
        results[f"ratio@{rate}/s"] = {"nats_singles_over_atomic": round(singles["nats_us_per_record"] / atomic["nats_us_per_record"], 3),
                                      "total_singles_over_atomic": round(total["singles"] / total["atomic"], 3)}
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\naudit publish costs (load average {os.getloadavg()[0]:.2f}):")
    for key, row in results.items():
        print(f"  {key}: {row}")
