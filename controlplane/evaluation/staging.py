"""What one call of the evaluation pipeline (`pipeline.Pipeline`) carries between its stages: the
applicable policies it selected, each context's stages so far, and the call's own parameters. Kept
apart so that the pipeline module stays the orchestrator, and so that a caller that finishes the
stages its own way (the replay: `controlplane.impact.replay`) names the same records.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from controlplane.evaluation.decision import PolicyOutcome, PreOutcome
from controlplane.evaluation.interfaces import Revision
from controlplane.policies.schemas import PolicyRecord

_T = TypeVar("_T")


class Selection(msgspec.Struct, frozen=True):
    """The applicable policies of one set of request parameters, and how they must be run."""

    chosen: list[PolicyRecord]
    pure: list[PolicyRecord]  # cannot call out: batched, inline when they fit the inline budget
    blocking: list[PolicyRecord]  # may call a model through http.send: one evaluation thread each
    rules_only: bool  # no policy can wait on a model: every stage runs in chunks


class Pending(msgspec.Struct, gc=False):
    """A pure policy's answer that asks for the model stage (awaited on the event loop)."""

    record: PolicyRecord
    value: Any
    error: str
    wasm_us: float


class Staged(msgspec.Struct, gc=False):
    """One context after stages 2 and 3: its pre-validation and each policy's outcome so far."""

    pre: PreOutcome
    wasm_us: float
    outs: list[PolicyOutcome | Pending] = msgspec.field(default_factory=list)


class Call(msgspec.Struct, gc=False):
    """One pipeline call's parameters and what it settled up front."""

    contexts: list[dict[str, Any]]
    policy_types: list[str]
    tier: str
    constitutional_hash: str
    explain: bool
    echo_input: bool
    evaluator: Revision  # pinned: the bundle revision every stage of the call uses
    revision: str
    selection: Selection
    ids: list[uuid.UUID]


Finish = Callable[[Call, int, list[Staged], Revision], list[_T]]  # a chunk's settled stages -> its results
