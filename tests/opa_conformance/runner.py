"""Runs the suite: prepare every case, build batches with `opa build`, evaluate them in worker
processes, judge each case. `run_suite` returns one `Outcome` (as a dict) per case.

A batch that fails to build or load is split: the cases opa's message names go alone, or, when it
names none, the batch is halved. A batch refused for a builtin the host lacks is sorted out with a
cheap `opa build -t plan` of each case that mentions the builtin.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.builtins.registry import EvalContext
from bridge.opawasm.bundle import policy_from_files
from bridge.opawasm.policy import WasmPolicy
from tests.opa_conformance.build import BuildFailed, Prepared, build, bundle_files, planned_builtins, prepare
from tests.opa_conformance.judge import Outcome, judge, run, strict_judgement
from tests.opa_conformance.queryvars import query_vars
from tests.opa_conformance.suite import CASES_SUBDIR, Case, load_cases, load_wasm_exceptions, opa_exception

BATCH = 120
TIMEOUT_S = 10.0  # per evaluation; OPA's runner has none, the suite's cases take milliseconds


def _test_sleep(ctx: EvalContext, duration: Any) -> None:
    """OPA's runner's `test.sleep(string)`: the case that calls it only needs the call to return."""
    return None


@dataclass(frozen=True)
class Worker:
    opa: Path
    cache: Path
    timeout: float

    def load(self, bundle: bytes, *, strict: bool) -> WasmPolicy:
        return policy_from_files(
            bundle_files(bundle), pool_size=1, timeout=self.timeout, strict_builtin_errors=strict,
            custom_builtins={"test.sleep": _test_sleep}, module_cache=self.cache / "modules",
        )


_WORKER: Worker | None = None


def _init_worker(worker: Worker) -> None:
    global _WORKER
    _WORKER = worker


def process(items: list[Prepared]) -> list[dict[str, Any]]:
    """Build, load and evaluate `items` together (in a worker process)."""
    w = _WORKER
    assert w is not None, "process() runs in a worker started by run_suite"
    try:
        bundle = build(w.opa, items, w.cache)
    except BuildFailed as exc:
        if len(items) == 1:
            first = next((ln for ln in exc.message.splitlines() if "error" in ln.lower()), exc.message)
            return [_failed(items[0], "build_error", first)]
        return _split(items, exc.keys)
    try:
        policy = w.load(bundle, strict=False)
    except wasm_errors.MissingBuiltinsError as exc:
        return _missing(w, items, exc.missing)
    except wasm_errors.BundleLoadError as exc:
        return [_failed(items[0], "load_error", str(exc))] if len(items) == 1 else _split(items, set())
    strict: WasmPolicy | None = None
    out: list[dict[str, Any]] = []
    try:
        for p in items:
            t0 = time.perf_counter()
            rows, err = run(policy, p, w.timeout)
            status, kind, detail = judge(p, rows, err)
            outcome = Outcome(p.case.name, status, kind, detail)
            if p.case.strict_error:
                strict = strict or w.load(bundle, strict=True)
                outcome.strict = strict_judgement(p, *run(strict, p, w.timeout))
            outcome.seconds = time.perf_counter() - t0
            out.append(outcome.as_dict())
    finally:
        policy.close()
        if strict is not None:
            strict.close()
    return out


def _failed(p: Prepared, kind: str, detail: str) -> dict[str, Any]:
    return Outcome(p.case.name, "fail", kind, detail).as_dict()


def _split(items: list[Prepared], named: set[str]) -> list[dict[str, Any]]:
    culprits = [p for p in items if p.case.key in named]
    rest = [p for p in items if p.case.key not in named]
    if culprits and rest:
        return [o for p in culprits for o in process([p])] + process(rest)
    half = len(items) // 2
    return process(items[:half]) + process(items[half:])


def _missing(w: Worker, items: list[Prepared], missing: list[str]) -> list[dict[str, Any]]:
    if len(items) == 1:
        return [_failed(items[0], "missing_builtin: " + ", ".join(missing), "")]
    refused, rest = [], []
    for p in items:
        used: set[str] = set()
        if any(m in p.case.text for m in missing):
            try:
                used = planned_builtins(w.opa, [p], w.cache) & set(missing)
            except BuildFailed:
                pass  # reported when the rest is built
        if used:
            refused.append(_failed(p, "missing_builtin: " + ", ".join(sorted(used)), ""))
        else:
            rest.append(p)
    if len(rest) == len(items):
        return _split(items, set())
    return refused + (process(rest) if rest else [])


@dataclass
class Report:
    cases: list[Case]
    outcomes: dict[str, dict[str, Any]]
    seconds: float

    def failures(self) -> dict[str, dict[str, Any]]:
        return {n: o for n, o in self.outcomes.items() if o["status"] == "fail"}


def run_suite(source: Path, opa: Path, cache: Path, *, jobs: int = 2, batch: int = BATCH, only: str = "") -> Report:
    """Every case of the suite in `source` (the opa module's directory), judged; `only`: the cases
    whose name contains it."""
    t0 = time.perf_counter()
    cases = [c for c in load_cases(source / CASES_SUBDIR) if only in c.name]
    exceptions = load_wasm_exceptions(source)
    outcomes: dict[str, dict[str, Any]] = {}
    together: list[Prepared] = []
    alone: list[Prepared] = []
    for case, out_vars in zip(cases, query_vars(opa, [c.query for c in cases], cache), strict=True):
        reason = opa_exception(case, exceptions)
        if reason is not None:
            outcomes[case.name] = Outcome(case.name, "skip", "opa_wasm_exception", reason).as_dict()
        elif isinstance(out_vars, str):
            outcomes[case.name] = Outcome(case.name, "fail", "query_parse_error", out_vars).as_dict()
        else:
            p = prepare(case, out_vars)
            (alone if p.alone else together).append(p)
    batches = [[p] for p in alone] + [together[i : i + batch] for i in range(0, len(together), batch)]
    worker = Worker(opa, cache, TIMEOUT_S)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked locks or engine
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(worker,)) as pool:
        for results in pool.map(process, batches):
            outcomes.update((o["name"], o) for o in results)
    return Report(cases, outcomes, time.perf_counter() - t0)
