"""What checking each decision-log event costs on `POST /logs`, per event, in process.

    .venv/bin/python -m benchmarks.agent_ingest              # ~20 s
    GROQPOLICY_BENCH_SHORT=1 .venv/bin/python -m benchmarks.agent_ingest

Two arms, same gzip-decompressed batch of OPA-shaped events (labels, bundles, path, input, result,
nd_builtin_cache, metrics, timestamp: ~1 KB each, as a v1.22.3 agent sends them):

- `array check`: what the control plane did before: decode the batch as generic JSON, check that it
  is an array of objects that each carry a string `decision_id` (one bad event refused the batch).
- `per event`: what it does now (controlplane.agents.ingest.screen_batch + DecisionLogStore.triage):
  split the array into raw events, check each one's size and OPA's typed event shape, decode it,
  digest its canonical JSON, and look its decision id up among those already stored.

Rounds alternate between the arms in blocks, so the machine's drift reaches both alike. Printed:
median µs per event for batches of 1, 10 and 100 events. See benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import msgspec

from controlplane.agents.decision_logs import DecisionLogStore
from controlplane.agents.ingest import screen_batch

SHORT = os.environ.get("GROQPOLICY_BENCH_SHORT") == "1"
ROUNDS = 200 if SHORT else 2000  # per arm and batch size
BLOCK = 50


def opa_event(i: int) -> dict:
    return {
        "labels": {"id": "5b4c0e9e-1a2b-4c3d-9e8f-0a1b2c3d4e5f", "version": "1.22.3", "app": "groqpolicy", "agent": "edge-1"},
        "decision_id": f"0b7e2a4c-{i:04d}-4d2e-9f1a-3c5b7d9e1f20",
        "bundles": {"groqpolicy": {"revision": "lib-3f0c9a1b2d4e"}},
        "path": "groqpolicy/policies/security_policies/decision",
        "input": {"principal": {"id": "bob", "roles": ["viewer"], "mfa": True, "source_ip": "10.1.2.3"},
                  "action": "read", "resource": {"type": "reports", "classification": "internal", "owner": "alice"}},
        "result": {"decision": "allow", "reasons": ["viewer may read internal reports"], "confidence": 1,
                   "policy_id": "security_policies", "violations": []},
        "nd_builtin_cache": {"time.now_ns": {"[]": 1764673200123456789}},
        "requested_by": "127.0.0.1:53122",
        "timestamp": "2026-12-02T11:00:00.123456789Z",
        "metrics": {"timer_rego_query_eval_ns": 51234, "timer_server_handler_ns": 88123},
        "req_id": i,
    }


def array_check(raw: bytes) -> int:
    events = msgspec.json.decode(raw)
    if not isinstance(events, list):
        raise ValueError("not an array")
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("decision_id"), str):
            raise ValueError("bad event")
    return len(events)


def per_event(store: DecisionLogStore, raw: bytes) -> int:
    accepted, _ = screen_batch(raw)
    return len(store.triage(accepted))


def main() -> None:
    store = DecisionLogStore(None)
    print(f"µs per event, median of {ROUNDS} rounds per arm (blocks of {BLOCK}, alternating)")
    print(f"{'batch':>6} {'bytes/event':>12} {'array check':>12} {'per event':>10} {'ratio':>6}")
    for n in (1, 10, 100):
        raw = json.dumps([opa_event(i) for i in range(n)], separators=(",", ":")).encode()
        arms = {"array check": lambda r=raw: array_check(r), "per event": lambda r=raw: per_event(store, r)}
        timings: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(ROUNDS // BLOCK):
            for name, fn in arms.items():
                for _ in range(BLOCK):
                    t0 = time.perf_counter_ns()
                    fn()
                    timings[name].append((time.perf_counter_ns() - t0) / 1000 / n)
        old, new = (statistics.median(timings[name]) for name in arms)
        print(f"{n:>6} {len(raw) // n:>12} {old:>12.1f} {new:>10.1f} {new / old:>6.1f}")


if __name__ == "__main__":
    main()
