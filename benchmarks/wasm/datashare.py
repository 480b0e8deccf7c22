"""Memory per pooled instance, `data` shared (one memory image per revision) against parsed per
instance, and evaluation speed of both side by side.

    .venv/bin/python -m benchmarks.wasm.datashare [--rounds 3] [--extra 8] [--blocks 60] [--speed-only]

Memory: each measurement is a fresh process (so nothing freed earlier hides in the allocator)
that loads the data-filter policy with a 1 MB or a 10 MB `data` document, evaluates once, reads
/proc/self/smaps_rollup, then grows the pool by `--extra` instances, evaluates once on each, and
reads it again. Per extra instance: the growth of PSS (each page divided among its mappers: the
marginal cost, since the image's pages count once however many instances map them) and of RSS
(every mapped page in full: what `ps` shows) over `--extra`. USS is no measure here: pages the
first instance had alone turn shared when others map them, so it falls as the pool grows. The
shared image itself (a sealed memfd, once per revision) is reported beside them. Processes alternate
shared / per-instance, `--rounds` times; medians.

Speed: one process, both modes loaded with the same wasm and data, evaluated in interleaved
blocks (order alternating block by block): the data filter (1 MB) and rbac1000 (a small `data`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import msgspec

from benchmarks.realistic.policies import DATA_FILTER, _filter_data
from benchmarks.wasm.wasm_bench_common import POLICIES, build

ITEMS = {"1MB": 10_000, "10MB": 100_000}
FILTER_INPUT = {"tenant": "tenant-3", "clearance": 5}


def _filter_wasm() -> bytes:
    POLICIES.setdefault("datafilter", {"source": DATA_FILTER, "entrypoint": "bench/filter/result", "data": None})
    return build("datafilter")[0]


def smaps_kib() -> dict[str, int]:
    """This process's Rss, Pss and USS (private clean + dirty), in KiB."""
    fields: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def measure_memory(size: str, share: bool, extra: int) -> dict[str, Any]:
    """One process's numbers (run in a child: see `main`)."""
    from bridge.opawasm.policy import WasmPolicy

    wasm = _filter_wasm()
    data = msgspec.json.encode(_filter_data(ITEMS[size]))
    t0 = time.perf_counter()
    policy = WasmPolicy(wasm, data, share_data=share, pool_size=extra + 1)
    load_s = time.perf_counter() - t0
    ep = policy.entrypoint_id("bench/filter/result")
    inp = msgspec.json.encode(FILTER_INPUT)
    answer = policy.evaluate_raw(ep, inp)
    before = smaps_kib()
    t0 = time.perf_counter()
    insts = [policy.pool.acquire() for _ in range(extra + 1)]  # the idle first one, then `extra` new
    new_s = (time.perf_counter() - t0) / extra
    created = smaps_kib()
    for inst in insts:
        if inst.evaluate_raw(ep, inp, 1000) == b"":
            raise AssertionError("no result")
    after = smaps_kib()
    for inst in insts:
        policy.pool.release(inst)
    if policy.evaluate_raw(ep, inp) != answer:
        raise AssertionError("answers differ between instances")
    per = {k: (created[k] - before[k]) / extra for k in before}
    per_eval = {k: (after[k] - before[k]) / extra for k in before}
    image = policy.image.size if policy.image is not None else 0
    return {"data_bytes": len(data), "load_s": load_s, "new_instance_s": new_s, "image_bytes": image,
            "per_instance_kib": per, "per_instance_after_eval_kib": per_eval}


def _child(size: str, share: bool, extra: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks.wasm.datashare", "--child", size, "--share", str(int(share)),
            "--extra", str(extra)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_table(rounds: int, extra: int) -> None:
    for size in ITEMS:
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for r in range(rounds):
            for share in ((True, False) if r % 2 == 0 else (False, True)):
                runs[share].append(_child(size, share, extra))
        for share in (False, True):
            rs = runs[share]

            def med(key: str, sub: str | None = None, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(r[key][sub] if sub else r[key] for r in rs)

            print(f"{size} data ({rs[0]['data_bytes'] / 1e6:.2f} MB), {'shared' if share else 'per-instance'}: "
                  f"per extra instance PSS {med('per_instance_kib', 'pss') / 1024:.2f} MiB "
                  f"(RSS {med('per_instance_kib', 'rss') / 1024:.2f}); after one evaluation each "
                  f"PSS {med('per_instance_after_eval_kib', 'pss') / 1024:.2f} MiB "
                  f"(RSS {med('per_instance_after_eval_kib', 'rss') / 1024:.2f}); "
                  f"image {med('image_bytes') / 2**20:.1f} MiB once; load {med('load_s') * 1000:.0f} ms, "
                  f"new instance {med('new_instance_s') * 1000:.1f} ms")


def speed_table(blocks: int) -> None:
    """Per evaluation, wall clock and this thread's CPU time (less exposed to other processes on a
    shared machine), medians over interleaved blocks whose order alternates."""
    from bridge.opawasm.policy import WasmPolicy

    rw, rdata = build("rbac1000")
    cases = {
        "data_filter 1MB": (_filter_wasm(), msgspec.json.encode(_filter_data()), "bench/filter/result",
                            msgspec.json.encode(FILTER_INPUT), 4),
        "rbac1000": (rw, rdata, POLICIES["rbac1000"]["entrypoint"], msgspec.json.encode(POLICIES["rbac1000"]["input"]), 500),
    }
    for name, (w, data, ep, inp, n) in cases.items():
        sides = {share: WasmPolicy(w, data, share_data=share, pool_size=1) for share in (False, True)}
        wall: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for b in range(blocks + 1):
            for share in ((False, True) if b % 2 == 0 else (True, False)):
                p = sides[share]
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(n):
                    p.evaluate_raw(ep, inp)
                if b:  # block 0 warms both up
                    wall[share].append((time.perf_counter() - t0) / n)
                    cpu[share].append((time.thread_time() - c0) / n)
        w_off, w_on = statistics.median(wall[False]), statistics.median(wall[True])
        c_off, c_on = statistics.median(cpu[False]), statistics.median(cpu[True])
        print(f"{name}: wall per-instance {w_off * 1e6:.1f} µs, shared {w_on * 1e6:.1f} µs ({w_on / w_off:.3f}x); "
              f"CPU per-instance {c_off * 1e6:.1f} µs, shared {c_on * 1e6:.1f} µs ({c_on / c_off:.3f}x) "
              f"(medians of {blocks} interleaved blocks of {n})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extra", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=60)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--share", type=int, default=1)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_memory(args.child, bool(args.share), args.extra)))
        return
    print(f"load average before: {os.getloadavg()}")
    if not args.speed_only:
        memory_table(args.rounds, args.extra)
    speed_table(args.blocks)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
