"""The report of a replay: what would change (a transition matrix per policy type, with redacted
examples of each changed cell), what the model calls would cost, and the latency change."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from controlplane.impact.candidate import Candidate
from controlplane.impact.records import Outcome, Recorded, redact
from controlplane.impact.replay import Oracle

EXAMPLES_PER_CELL = 3
NONE = "none"  # a policy type that had no part in the decision before (or after)


class Example(msgspec.Struct):
    policy_type: str
    before: str
    after: str
    count: int
    inputs: list[Any]  # redacted


class ModelCalls(msgspec.Struct):
    recorded: int  # distinct recorded judgments the replay used (answered from the recording, not asked anew)
    new: int  # distinct requests asked anew
    failed: int
    cost_usd: float  # of the new calls, at the tier catalog's prices
    via: str  # online | batch
    batches: list[str] = []  # via batch: the Batch API jobs submitted, in order


class Latency(msgspec.Struct):
    recorded_wasm_us_p50: float  # the live revision's in-process time per decision, as recorded
    candidate_wasm_us_p50: float  # the candidate's, replayed
    change_us: float
    new_call_ms_p50: float  # the model calls asked anew (0 when none; via batch: the jobs' wall time)


class Report(msgspec.Struct, kw_only=True):
    id: str
    candidate: str
    candidate_revision: str
    live_revisions: list[str]
    decisions: int
    changed: int
    matrix: dict[str, dict[str, dict[str, int]]]  # policy type ("*": the whole decision) -> before -> after -> n
    examples: list[Example]
    model_calls: ModelCalls
    latency: Latency
    elapsed_s: float
    decisions_per_s: float
    created_at: float
    helper_decisions: int = 0  # decided by the replay's helper processes (the rest by the process asked)


def _p50(values: Iterable[float]) -> float:
    found = list(values)
    return round(statistics.median(found), 2) if found else 0.0


def report(candidate: Candidate, decisions: list[Recorded], outcomes: list[Outcome], oracle: Oracle, *,
           redact_fields: Iterable[str], started: float, via: str) -> Report:
    """The report; its rate counts the replay from `started` (perf_counter) to the report, included."""
    fields = frozenset(redact_fields)
    counts: dict[tuple[str, str, str], int] = {}
    examples: dict[tuple[str, str, str], Example] = {}
    changed = 0
    for d, o in zip(decisions, outcomes, strict=True):
        before_types, after_types = d.by_type, o.by_type
        kinds = before_types.keys() if before_types.keys() == after_types.keys() else before_types.keys() | after_types.keys()
        cells = [("*", d.decision, o.decision)] + [(k, before_types.get(k, NONE), after_types.get(k, NONE)) for k in kinds]
        changed += d.decision != o.decision
        for cell in cells:
            counts[cell] = counts.get(cell, 0) + 1
            if cell[1] != cell[2]:
                ex = examples.get(cell)
                if ex is None:
                    ex = examples[cell] = Example(*cell, count=0, inputs=[])
                ex.count += 1
                if len(ex.inputs) < EXAMPLES_PER_CELL:
                    ex.inputs.append(redact(d.input, fields))
    matrix: dict[str, dict[str, dict[str, int]]] = {}
    for (kind, before, after), n in sorted(counts.items()):
        matrix.setdefault(kind, {}).setdefault(before, {})[after] = n
    latency = Latency(recorded_wasm_us_p50=_p50(d.wasm_us for d in decisions),
                      candidate_wasm_us_p50=_p50(o.wasm_us for o in outcomes), change_us=0.0,
                      new_call_ms_p50=_p50(oracle.asked_ms))
    latency.change_us = round(latency.candidate_wasm_us_p50 - latency.recorded_wasm_us_p50, 2)
    elapsed_s = time.perf_counter() - started
    return Report(
        id=str(uuid.uuid4()), candidate=candidate.description, candidate_revision=candidate.revision,
        live_revisions=sorted({d.revision for d in decisions if d.revision}), decisions=len(decisions),
        changed=changed, matrix=matrix, examples=sorted(examples.values(), key=lambda e: (e.policy_type, -e.count)),
        model_calls=ModelCalls(recorded=oracle.recorded, new=len(oracle.asked), failed=oracle.failed,
                               cost_usd=round(oracle.cost_usd, 9), via=via),
        latency=latency, elapsed_s=round(elapsed_s, 4),
        decisions_per_s=round(len(decisions) / elapsed_s, 1) if elapsed_s > 0 else 0.0, created_at=time.time(),
        helper_decisions=oracle.helped,
    )
