"""The seams of the evaluation pipeline: what it is built with, as Protocols.

The composition root (`controlplane.services`) hands the pipeline its evaluator, its model client,
its decision recorder and its escalation sink when it constructs it; nothing is attached later.
The pipeline knows them only by these shapes, so evaluation imports neither the audit package nor
the NATS client, and a test can hand it a real evaluator with no audit trail at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from controlplane.evaluation.schemas import EvaluateResponse


class Revision(Protocol):
    """One loaded bundle revision: what every stage of one call evaluates on."""

    @property
    def revision(self) -> str | None: ...

    def evaluate(self, entrypoint: str, input: Any = None, *, timeout: float | None = None,
                 inline: bool | int = False) -> Any:
        """The entrypoint's value; with `inline`, InlineBudgetExceeded when it does not fit the inline budget."""


class Evaluator(Revision, Protocol):
    """The in-process evaluator (`bridge.opawasm.WasmEvaluator`), hot-swapped by the runtime.

    `pinned()` keeps the current revision open for a block even when a newer one is loaded
    meanwhile, so one call never straddles two revisions."""

    @property
    def pool_size(self) -> int | None: ...

    def pinned(self) -> AbstractContextManager[Revision]: ...


# where an evaluation came from (HTTP, a batch over HTTP, NATS), as the audit trail names it
Source = Literal["api", "batch", "nats"]

# `await ask_model(tier, InferRequest JSON)` -> (HTTP status, JSON body, max-age seconds); raises a
# GroqPolicyError when no worker can answer (the runtime's ModelClient.request)
AskModel = Callable[[str, bytes], Awaitable[tuple[int, bytes, int]]]

# `await escalate(doc)`: a constitutional violation, for reviewers (controlplane.audit.wiring)
EscalationSink = Callable[[dict[str, Any]], Awaitable[None]]


class DecisionRecorder(Protocol):
    """Where every served decision is recorded before it is answered (the audit trail, wrapped by
    the replay store and shadow mode: controlplane.impact). A recorder that cannot record raises,
    and the decision is not served. `policy_types` are the request's, as asked (empty: any)."""

    async def record(self, response: EvaluateResponse, *, tier: str, source: Source,
                     input_context: dict[str, Any], policy_types: list[str]) -> object: ...

    async def record_batch(self, responses: list[EvaluateResponse], contexts: list[dict[str, Any]], *, tier: str,
                           batch_id: str, latency_ms: float, policy_types: list[str]) -> object: ...
