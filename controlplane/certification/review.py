"""The optional model review: a `premium` or `reasoning` model reads the policy text against the
principles it declares and answers with a verdict and its findings.

It goes through the inference workers like any judgment (`groq.infer.<tier>` over NATS, the
control plane's model client), so the tier's fallback, breaker and the emulator without a key apply.
The verdict is the worker's structured answer to an `answer: review` request: decision, confidence,
rationale and `findings` (each a `bridge.inference.wire.Finding`: principle, severity, text), under
a strict JSON schema (`REVIEW_JSON_SCHEMA`; `strict_schema` keeps the request to models that enforce
it), so the findings are the model's own structure, never sentences split out of prose. A reply
without findings is a failed call to the worker, which moves on to the next model or fails closed.
The policy text is the context (data for the model, never instructions), fenced like any input.

A review that was asked for and cannot happen (no worker, an error reply, a worker that failed
closed because no model answered) fails the write (fail closed): a policy is never activated as
reviewed when it was not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec

from bridge.inference.wire import InferReply, InferRequest, decode_reply, encode
from bridge.kernel.errors import GroqPolicyError, Unavailable, decode_error
from controlplane.certification.certificate import ModelReview

ReviewTier = Literal["premium", "reasoning"]
REVIEW_DEADLINE_MS = 60_000  # a reasoning model reading a whole policy: well beyond a judgment's deadline

# `await ask_model(tier, InferRequest JSON)` -> (HTTP status, JSON body, max-age seconds)
AskModel = Callable[[str, bytes], Awaitable[tuple[int, bytes, int]]]

QUESTION = (
    "You certify a Rego policy before it is activated. Read the policy text in the input against each "
    "constitutional principle it declares (given with their text). Answer deny when the policy contradicts a "
    "declared principle, lets a request through when a model call or an input is missing or fails, or hides "
    "its reasons; review when it does not clearly enforce a declared principle; allow when it enforces them. "
    "List your findings: for each, the id of the principle it concerns, its severity (high: the policy "
    "contradicts the principle; medium: it does not clearly enforce it; low: a remark) and one sentence."
)


class ReviewUnavailable(Unavailable):
    """The model review was asked for and no model answered: the write is refused (fail closed)."""

    code = "review_unavailable"


def request_body(*, name: str, text: str, principles: list[dict[str, Any]]) -> bytes:
    context = {"policy_name": name, "policy_text": text, "declared_principles": principles}
    return encode(InferRequest(question=QUESTION, context=context, policy=name, deadline_ms=REVIEW_DEADLINE_MS,
                               temperature=0.0, strict_schema=True, answer="review"))


def verdict(reply: InferReply) -> ModelReview:
    found = reply.findings if reply.findings is not msgspec.UNSET else []
    return ModelReview(tier=reply.tier, model=reply.model, decision=reply.decision, confidence=reply.confidence,
                       findings=list(found), rationale=reply.rationale, emulated=reply.emulated)


async def review(ask_model: AskModel, tier: ReviewTier, *, name: str, text: str,
                 principles: list[dict[str, Any]]) -> ModelReview:
    """The model's verdict on the policy; ReviewUnavailable when none could be had."""
    try:
        status, body, _ = await ask_model(tier, request_body(name=name, text=text, principles=principles))
    except GroqPolicyError as exc:
        raise ReviewUnavailable(f"model review ({tier}): no answer: {exc}; the policy is not activated") from exc
    if status != 200:
        try:
            why = decode_error(body).error.message
        except (msgspec.DecodeError, AttributeError):
            why = body[:200].decode(errors="replace")
        raise ReviewUnavailable(f"model review ({tier}): the worker answered {status}: {why}; the policy is not activated")
    try:
        reply = decode_reply(body)
    except msgspec.DecodeError as exc:
        raise ReviewUnavailable(f"model review ({tier}): the worker's reply is not a verdict ({exc})") from None
    if reply.degraded:  # the worker failed closed: no model read the policy
        why = "; ".join(reply.reasons) or "no model produced a valid answer"
        raise ReviewUnavailable(f"model review ({tier}): no model answered ({why}); the policy is not activated")
    return verdict(reply)
