"""The replay of recorded decisions, in-process, between two checkouts (issue 16).

    .venv/bin/python benchmarks/impact/replay_ab.py [--decisions 20000] [--rounds 3] [--against /other/checkout ...] [--helpers N]

What runs is `controlplane.impact.replay.decide_all`, the impact service's replay loop, without
the control plane around it: the candidate of `benchmarks/test_impact_bench.py` (the `limits`
policy tightened, beside `judge`, which asks the model through `lib.groq`, i.e. `http.send`), built
by the real `opa` with the library and the constitution as the control plane builds it, on
`--decisions` decisions of the same contexts (`TEXTS` distinct texts, so `TEXTS` distinct
judgments). The judgments are recorded first by one pass whose model is a deterministic local
answerer; every timed pass answers each of them from the recording (an `Oracle` without a way to
ask anew, as a replay with no changed prompt). Rules-only decisions (`risk_management`) and those
with judgments are timed in turn.

The child freezes its start-up heap before the timed passes, as the serving process does once
started (`controlplane.app`), so the collections a replay triggers walk what the replay makes, not
the modules and the compiled bundle (`--no-freeze`: as runs before 2026-12-03 16:50 UTC measured:
rules only ~1.4x slower, with judgments 1.0-1.2x).

`--helpers N`: the replay splits its chunks with N helper processes (`controlplane.impact.helpers`),
made within the timed span as the impact service makes them; their fork server is started before
(as the service starts it with the control plane).

Each checkout runs in a child process of its own (its own `bridge` and `controlplane` packages),
the order of the sides reversed every other round, so all see the same machine load; each prints
JSON. The number to read is the decisions/s of each kind per round, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEXTS = 50
LIMITS, JUDGE = uuid.UUID(int=11), uuid.UUID(int=12)
BRIDGE_URL = "http://127.0.0.1:8016"  # lib.groq's default: the bundle carries no config


def _context(i: int) -> dict[str, Any]:
    return {"principal": {"id": f"svc-{i % 97}"}, "amount": i % 150, "text": f"note {i % TEXTS}: a friendly reminder"}


def _answer(tier: str, body: Any, timeout: float) -> tuple[int, Any]:
    """The recording pass's model: a reply shaped as the worker's, fixed by the question's text."""
    text = str((body.get("context") or {}).get("text", "")) if isinstance(body, dict) else ""
    deny = text.endswith("0: a friendly reminder")
    return 200, {"decision": "deny" if deny else "allow", "confidence": 0.9, "rationale": "benchmark",
                 "model": "bench-model", "tier": tier, "cached": False}


class _Ask:
    name = "online"

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        return _answer(tier, body, timeout)

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        import msgspec

        status, reply = _answer(tier, msgspec.json.decode(body), 1.0)
        return status, msgspec.json.encode(reply), 0


def child(decisions: int, freeze: bool = True, helpers: int = 0) -> dict[str, Any]:
    """One measurement on the checkout this process imports (run with its PYTHONPATH)."""
    from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
    from bridge.opabundle.keys import generate_keypair
    from bridge.opawasm import HostConfig, WasmEvaluator
    from controlplane.evaluation import constitution as cn
    from controlplane.impact import replay
    from controlplane.impact.records import Judgment, Recorded
    from controlplane.policies import rego
    from controlplane.policies.schemas import PolicyRecord
    from tests.test_impact import JUDGE as JUDGE_TEXT
    from tests.test_impact import TIGHTER
    from tests.wasm_helpers import build_wasm_bundle, signed_bundle

    records = [PolicyRecord(rule_id=LIMITS, name="limits", policy_type="risk_management", opa_policy=TIGHTER,
                            performance_tier="fast"),
               PolicyRecord(rule_id=JUDGE, name="judge", policy_type="ethical_constraints", opa_policy=JUDGE_TEXT,
                            performance_tier="fast")]
    modules = {f"p{i}.rego": rego.bundle_module(r.rule_id, r.opa_policy, title=r.name, policy_type=r.policy_type,
                                                tier="fast") for i, r in enumerate(records)}
    lib = {p.name: p.read_text() for p in (ROOT / "rego" / "lib").glob("*.rego") if not p.name.endswith("_test.rego")}
    files = {**modules, **lib, "constitution.rego": (ROOT / "rego/constitution/constitution.rego").read_text()}
    data = {"groqpolicy": {"constitution": json.loads((ROOT / "rego/groqpolicy/constitution/data.json").read_text())}}
    entrypoints = [cn.PRE, cn.PRE_MANY, cn.POST, cn.POST_MANY]
    for r in records:
        entrypoints += [rego.wasm_entrypoint(r.rule_id), rego.wasm_batch_entrypoint(r.rule_id)]
    key = generate_keypair("RS256", "replay-ab")
    archive = signed_bundle(build_wasm_bundle(files, entrypoints, data), key)

    class Candidate:  # what `decide_all` reads of a candidate
        pass

    candidate = Candidate()
    candidate.records = records  # type: ignore[attr-defined]
    kinds = {"rules_only": ["risk_management"], "with_model_judgments": ["risk_management", "ethical_constraints"]}

    def evaluator(oracle: Any) -> Any:
        extra = {"send_memo": oracle.memo} if getattr(oracle, "memo", None) is not None else {}
        ev = WasmEvaluator({key.kid: key.verification_key()}, keyid=key.kid, pool_size=4,
                           host=HostConfig(bridge_url=BRIDGE_URL, infer_transport=oracle.transport, **extra))
        ev.load(archive)
        return ev

    def recorded(types: list[str]) -> list[Any]:
        return [Recorded(id=str(i), ts=0.0, source="batch", input=_context(i), decision="allow", tier="fast",
                         policy_types=types, constitutional_hash=CONSTITUTIONAL_HASH) for i in range(decisions)]

    def run(oracle: Any, found: list[Any], count: int = 0) -> tuple[float, list[Any]]:
        ev = evaluator(oracle)
        try:
            t0 = time.perf_counter()
            aides = None
            if count:  # made within the timed span, as the impact service makes them for its replay
                from controlplane.impact.helpers import Helpers

                aides = Helpers(count, archive=archive, key=key.verification_key(), bridge_url=BRIDGE_URL,
                                records=records, replies=oracle.replies, final_misses=oracle.reask is None)
            try:
                outcomes = asyncio.run(replay.decide_all(candidate, ev, oracle, found, helpers=aides))  # type: ignore[arg-type]
            finally:
                if aides is not None:
                    aides.close()
            return time.perf_counter() - t0, outcomes
        finally:
            ev.close()

    # the recording pass: every judgment asked once of the local answerer, then kept as recorded
    first = replay.Oracle({}, _Ask())
    run(first, recorded(kinds["with_model_judgments"])[: TEXTS * 4])
    judgments = {k: Judgment(key=k, tier="fast", reply=v) for k, v in first.replies.items()}
    if helpers:  # the impact service starts the fork server while it compiles the candidate: not timed
        from controlplane.impact.helpers import warm

        warm()
    if freeze:  # as the serving process does once started (controlplane.app): collections skip that heap
        gc.collect()
        gc.freeze()
    out: dict[str, Any] = {"load_avg_1m": round(os.getloadavg()[0], 2), "frozen_heap": freeze}
    for name, types in kinds.items():
        found = recorded(types)
        oracle = replay.Oracle(judgments, None)
        elapsed, outcomes = run(oracle, found, helpers)
        decided: dict[str, int] = {}
        for o in outcomes:
            decided[o.decision] = decided.get(o.decision, 0) + 1
        out[name] = {"decisions_per_s": round(len(found) / elapsed), "recorded": oracle.recorded,
                     "failed": oracle.failed, "new": len(oracle.asked), "decisions": dict(sorted(decided.items()))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--against", action="append", default=[],
                    help="another checkout, measured in alternating rounds (may be given more than once)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--helpers", type=int, default=0, help="replay helper processes (controlplane.impact.helpers)")
    ap.add_argument("--no-freeze", action="store_true",
                    help="leave the start-up heap in the collector's generations (replays measured before 2026-12-03 16:50 UTC did)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.decisions, freeze=not args.no_freeze, helpers=args.helpers)))
        return
    sides = {"this": ROOT}
    for other in args.against:
        sides[other] = Path(other).resolve()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for n in range(args.rounds):
        order = list(sides) if n % 2 == 0 else list(reversed(sides))
        for name in order:
            env = dict(os.environ, PYTHONPATH=f"{sides[name]}{os.pathsep}{ROOT}")
            # this file run by path: the other checkout may not have it; its packages come first
            argv = [sys.executable, __file__, "--child", "--decisions", str(args.decisions)] + ["--no-freeze"] * args.no_freeze
            argv += ["--helpers", str(args.helpers)] * bool(args.helpers)
            proc = subprocess.run(argv, env=env,
                                  cwd=sides[name], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{name}: {proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(row)
            print(name, json.dumps(row), flush=True)
    for name, rows in results.items():
        for kind in ("rules_only", "with_model_judgments"):
            rates = [r[kind]["decisions_per_s"] for r in rows]
            print(f"{name} {kind}: decisions/s per round {rates}, median {statistics.median(rates)}")


if __name__ == "__main__":
    main()
