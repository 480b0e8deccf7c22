"""Wire shapes of the evaluation jobs API (`/api/v1/evaluate/jobs`).

A job's contexts are decoded as `list[Any]` and checked one by one (`check_contexts`), so a context
that is not a JSON object is refused with a 422 that names its line (the file's line for the CLI,
1-based), not with the decoder's message about the whole list.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bridge.kernel.errors import Unprocessable
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, Tier
from controlplane.policies.schemas import ConstitutionalHash, PolicyType

MAX_JOB_CONTEXTS = 100_000  # one job's contexts; 10,000 (the measured size) fit ten times over
JobState = Literal["queued", "running", "completed", "failed", "cancelled", "interrupted"]
FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled", "interrupted"})
Via = Literal["online", "batch"]


class TooManyContexts(Unprocessable):
    pass


class BadContext(Unprocessable):
    pass


class JobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    contexts: list[Any]  # each a JSON object (checked with its line number)
    policy_types: list[PolicyType] = []  # empty: every type
    performance_tier: Tier = "reasoning"
    constitutional_hash: ConstitutionalHash = CONSTITUTIONAL_HASH
    via: Via = "batch"  # batch: judgments through the Batch API at its price; online: the inference workers now


class BatchView(msgspec.Struct, kw_only=True):
    """The Batch API job that is running, or ran last (as its last status check said)."""

    id: str
    status: str
    done: int
    failed: int
    total: int


class Judgments(msgspec.Struct, kw_only=True):
    asked: int = 0  # via batch: distinct judgment requests sent as batch lines; online: the policies' model calls
    failed: int = 0  # via batch: of them, no usable answer (the line failed, expired or was cancelled): review
    cost_usd: float = 0.0  # estimated from the tier catalog: via batch at its batch discount, online at list price


class Job(msgspec.Struct, kw_only=True):
    id: str
    state: JobState
    via: Via
    performance_tier: str
    policy_types: list[str]
    contexts: int
    created_at: float
    by: str = ""  # the token that submitted it
    started_at: float | None = None
    finished_at: float | None = None
    revision: str = ""  # the bundle revision every pass evaluated on
    passes: int = 0  # via batch: the pass running (or that gave the results)
    done: int = 0  # contexts decided in this pass
    batch: BatchView | None = None
    batches: list[str] = []  # the Batch API jobs submitted, in order
    judgments: Judgments = msgspec.field(default_factory=Judgments)
    decisions: dict[str, int] = {}  # once completed: how many of each decision
    error: str = ""
    runner: str = ""  # the process running it (host:pid/start), which heartbeats it
    heartbeat_at: float | None = None  # the runner's last word; a queued/running job unheard of long is interrupted


def check_contexts(req: JobRequest) -> list[dict[str, Any]]:
    """The request's contexts, each a JSON object; else a 422 naming the first bad line."""
    n = len(req.contexts)
    if n == 0:
        raise TooManyContexts(f"contexts: empty (expected 1 to {MAX_JOB_CONTEXTS:,} context objects)")
    if n > MAX_JOB_CONTEXTS:
        raise TooManyContexts(f"contexts: at most {MAX_JOB_CONTEXTS:,} per job, got {n:,} (split the file)")
    for i, ctx in enumerate(req.contexts):
        if not isinstance(ctx, dict):
            raise BadContext(f"contexts[{i}] (line {i + 1}): expected a JSON object, got {_json_type(ctx)}")
    return req.contexts


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}.get(type(value), "value")
