"""One shadow as a control-plane process runs it: the candidate's evaluator and pipeline, this
process's counters, and the other processes' counters as the bucket's watch brought them (the
deployment's are their sum, `totals`)."""

from __future__ import annotations

import time
import uuid
from collections import deque

from bridge.opawasm import WasmEvaluator
from controlplane.evaluation.pipeline import Pipeline
from controlplane.impact.candidate import Candidate
from controlplane.impact.records import Divergence
from controlplane.impact.shadow_state import Counts, SavedShadow
from controlplane.policies.schemas import PolicyRecord

KEPT_DIVERGENCES = 100


class ShadowEntry:
    """One shadow as this process runs it: its candidate's evaluator and pipeline, its counters."""

    def __init__(self, rule_id: uuid.UUID, candidate: Candidate, evaluator: WasmEvaluator, sample: float,
                 saved: SavedShadow | None = None) -> None:
        self.rule_id, self.candidate, self.evaluator, self.sample = rule_id, candidate, evaluator, sample
        self.pipeline: Pipeline | None = None  # made on the shadow thread's loop
        self.started_at = saved.started_at if saved else time.time()
        self.id = saved.id if saved else uuid.uuid4().hex  # tells this shadow's counters from an earlier one's
        # what shadows saved on their definition before counters had keys of their own
        self.base = (saved.compared, saved.diverged, saved.errors) if saved else (0, 0, 0)
        self.compared = self.diverged = self.errors = 0  # this process's, since it started comparing
        self.peers: dict[str, Counts] = {}  # the other processes' (and this one's earlier lives')
        self.by = saved.by if saved else ""
        self.saved_counts = (0, 0, 0)  # as the bucket holds this process's
        self.divergences: deque[Divergence] = deque(maxlen=KEPT_DIVERGENCES)
        self.types = {r.policy_type for r in candidate.records if r.rule_id in candidate.changed}

    def records(self) -> list[PolicyRecord]:
        return self.candidate.records

    def totals(self) -> tuple[int, int, int]:
        """Compared, diverged, errors over the whole deployment."""
        compared, diverged, errors = (self.base[0] + self.compared, self.base[1] + self.diverged,
                                      self.base[2] + self.errors)
        for c in list(self.peers.values()):
            compared, diverged, errors = compared + c.compared, diverged + c.diverged, errors + c.errors
        return compared, diverged, errors

    @property
    def rate(self) -> float:
        compared, diverged, _ = self.totals()
        return diverged / compared if compared else 0.0

    def applies(self, policy_types: list[str]) -> bool:
        return not policy_types or bool(self.types.intersection(policy_types))

    def saved(self) -> SavedShadow:
        return SavedShadow(spec=self.candidate.spec, sample=self.sample, started_at=self.started_at, by=self.by,
                           compared=self.base[0], diverged=self.base[1], errors=self.base[2], id=self.id)


def parse_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
