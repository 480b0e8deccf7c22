"""What signing the audit records costs: per record on the write path, and on `/api/v1/evaluate`.

    .venv/bin/python -m benchmarks.records_signing            # ~1 min
    GROQPOLICY_BENCH_SHORT=1 .venv/bin/python -m benchmarks.records_signing
    GROQPOLICY_BENCH_CLIENTS=8 .venv/bin/python -m benchmarks.records_signing   # 8 clients at once

1. The write path: sealing a group commit of n records (chain hashes, encoding) with and without its
   one signature, per record, for commits of 1, 16 and 256 records.
2. `/api/v1/evaluate` on a real control plane (uvicorn in this process, a real nats-server, the
   policy library compiled), sequential requests over one keep-alive connection, in both audit
   durabilities: blocks of requests alternate between the writer signing as it does and a writer
   whose signer does nothing (same code path, no Ed25519), so the machine's drift reaches both arms
   alike. Medians and p99 of each arm's request latency. With several clients at once
   (`GROQPOLICY_BENCH_CLIENTS`, each its own thread and connection), group commits carry several
   records and one signature covers them all. See benchmarks/README.md.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit.records import AuditRecord, seal_chain
from controlplane.audit.signing import signer
from controlplane.infra.processes import start_nats
from controlplane.infra.recordkeys import RecordKeys
from tests.controlplane_helpers import ADMIN_HEADERS, make_settings, running_control_plane

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
PER_ARM = 300 if SHORT else 3000  # evaluations per arm and durability
BLOCK = 100  # evaluations per block; blocks alternate between the arms
WARMUP = 200
CLIENTS = int(os.environ.get("GROQPOLICY_BENCH_CLIENTS", "1"))


class NoSigning:
    """The writer's signer, doing nothing: the arm without signing (same calls, no Ed25519)."""

    kid = "none"

    def sign(self, domain: str, payload: Any) -> str:
        return ""


def write_path(keys: RecordKeys) -> None:
    records = [AuditRecord(source="api", decision="allow", evaluation_id=f"e{i}", policy_ids=["p1", "p2"],
                           reasons=["amount within limit"], input_sha256="ab" * 32, latency_ms=0.5) for i in range(256)]
    print("write path: sealing one group commit, per record (median of 200 rounds)")
    for n in (1, 16, 256):
        batch = records[:n]
        timings: dict[str, list[float]] = {"sealed": [], "sealed+signed": []}
        for _ in range(200):
            for arm in timings:
                t0 = time.perf_counter()
                seal_chain(batch, "0" * 64, signer(keys, "GROQPOLICY_AUDIT", 1, n) if arm == "sealed+signed" else None)
                timings[arm].append((time.perf_counter() - t0) / n * 1e6)
        plain, signed = (statistics.median(timings[a]) for a in ("sealed", "sealed+signed"))
        print(f"  commit of {n:3d}: sealed {plain:7.2f} us/record, sealed+signed {signed:7.2f} us/record "
              f"(signature: +{signed - plain:6.2f} us/record)")


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def evaluate_ab(durability: str, tmp: Path, nats_url: str) -> None:
    settings = make_settings(tmp / durability, compile_on_start=True, nats_url=nats_url, audit_durability=durability,
                             rate_limit="off")
    body = {"input_context": {"principal": {"id": "bench", "roles": ["viewer"]}, "action": "read",
                              "resource": {"type": "reports"}},
            "policy_types": ["security_policies"], "performance_tier": "fast", "constitutional_hash": CONSTITUTIONAL_HASH}
    clients = [httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) for _ in range(CLIENTS)]

    def one(client: httpx.Client) -> float:
        t0 = time.perf_counter()
        r = client.post("/api/v1/evaluate", json=body)
        assert r.status_code == 200, r.text
        return (time.perf_counter() - t0) * 1e3

    def run(n: int, pool: ThreadPoolExecutor) -> list[float]:
        per_client = [n // CLIENTS] * CLIENTS
        futures = [pool.submit(lambda c=c, k=k: [one(c) for _ in range(k)]) for c, k in zip(clients, per_client, strict=True)]
        return [x for f in futures for x in f.result()]

    with running_control_plane(settings) as services, ThreadPoolExecutor(CLIENTS) as pool:
        deadline = time.monotonic() + 180
        while not clients[0].get("/health").json()["bundles"]:
            assert time.monotonic() < deadline, "library not published"
            time.sleep(0.1)
        writer = services.audit.writer
        arms: dict[str, Any] = {"signed": writer.keys, "unsigned": NoSigning()}
        lat: dict[str, list[float]] = {a: [] for a in arms}
        run(WARMUP, pool)
        for block in range(2 * PER_ARM // BLOCK):
            arm = ("signed", "unsigned")[block % 2]
            writer.keys = arms[arm]  # the stream of this run is thrown away: unsigned records do not matter
            lat[arm] += run(BLOCK, pool)
        writer.keys = arms["signed"]
    for c in clients:
        c.close()
    med = {a: statistics.median(v) for a, v in lat.items()}
    print(f"/api/v1/evaluate, {durability} durability, {CLIENTS} client(s), {PER_ARM} evaluations per arm "
          f"in blocks of {BLOCK}:")
    for a in arms:
        print(f"  {a:9s} median {med[a]:.3f} ms  p99 {_quantile(lat[a], 0.99):.3f} ms")
    print(f"  signing: {100 * (med['signed'] / med['unsigned'] - 1):+.1f}% on the median")


def main() -> None:
    write_path(RecordKeys.generate())
    tmp = Path(tempfile.mkdtemp(prefix="bench-records-"))
    for durability in ("spool", "ack"):
        ns = start_nats(tmp / f"nats-{durability}")
        try:
            evaluate_ab(durability, tmp, ns.extra["url"])
        finally:
            ns.stop()


if __name__ == "__main__":
    main()
