"""The optional model review: a `premium` or `reasoning` model reads the policy text against the
principles it declares and answers with a verdict and its findings.

It goes through the inference workers like any judgment (`groq.infer.<tier>` over NATS, the
control plane's model client), so the tier's fallback, breaker and the emulator without a key apply.
The verdict is the worker's structured answer (`bridge.inference.wire.Verdict`: decision,
confidence, rationale, validated against its JSON schema); the model is asked to state each finding
as one sentence of the rationale, separated by "; ", and the findings are those sentences.
The policy text is the context (data for the model, never instructions), fenced like any input.

A review that was asked for and cannot happen (no worker, an error reply, a worker that failed
closed because no model answered) fails the write (fail closed): a policy is never activated as
reviewed when it was not.
"""

from __future__ import annotations

import re
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
    "State each finding as one sentence in the rationale, separated by '; '."
)
_SPLIT = re.compile(r";\s+|\n+")


class ReviewUnavailable(Unavailable):
    """The model review was asked for and no model answered: the write is refused (fail closed)."""

    code = "review_unavailable"


def findings(rationale: str) -> list[str]:
    """The rationale's findings: its sentences separated by "; " or new lines."""
    return [part.strip() for part in _SPLIT.split(rationale) if part.strip()]


def request_body(*, name: str, text: str, principles: list[dict[str, Any]]) -> bytes:
    context = {"policy_name": name, "policy_text": text, "declared_principles": principles}
    return encode(InferRequest(question=QUESTION, context=context, policy=name, deadline_ms=REVIEW_DEADLINE_MS,
                               temperature=0.0))


def verdict(reply: InferReply) -> ModelReview:
    return ModelReview(tier=reply.tier, model=reply.model, decision=reply.decision, confidence=reply.confidence,
                       findings=findings(reply.rationale) or ["the model gave no findings"], rationale=reply.rationale,
                       emulated=reply.emulated)


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
