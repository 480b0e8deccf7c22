"""What a judgment asks a model, as chat-completion parameters, and what its answer means: one home
for the worker's direct calls (`bridge.inference.worker.engine`) and Batch API lines
(`bridge.inference.batch`), so a judgment is the same question whichever way it travels."""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.inference.catalog import Catalog
from bridge.inference.prompts import render
from bridge.inference.wire import REVIEW_JSON_SCHEMA, VERDICT_JSON_SCHEMA, InferRequest, Verdict, decode_verdict

# structured output: a strict JSON schema where the model supports one, else JSON mode
STRICT_FORMAT: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "policy_verdict", "strict": True,
                                                                         "schema": VERDICT_JSON_SCHEMA}}
REVIEW_FORMAT: dict[str, Any] = {"type": "json_schema", "json_schema": {"name": "policy_review", "strict": True,
                                                                         "schema": REVIEW_JSON_SCHEMA}}
JSON_FORMAT: dict[str, Any] = {"type": "json_object"}


class BadAnswer(Exception):
    """A model's answer that is not a verdict (`str(exc)` says how)."""


def completion_params(catalog: Catalog, model: str, tier: str, req: InferRequest,
                      messages: list[Any] | None = None) -> dict[str, Any]:
    """The chat-completion body for one judgment (without timeout): only the parameters the model
    accepts, its reasoning kept out of the JSON answer. `messages`: `render(req)`, if already made."""
    spec, tier_spec = catalog.models[model], catalog.tier(tier)
    effort = tier_spec.reasoning_effort
    params: dict[str, Any] = {
        "model": model, "messages": render(req) if messages is None else messages,
        "response_format": (REVIEW_FORMAT if req.answer == "review" else STRICT_FORMAT) if spec.json_schema_strict
        else JSON_FORMAT,
        "max_completion_tokens": min(req.max_tokens or tier_spec.max_tokens, tier_spec.max_tokens,
                                     spec.max_completion_tokens),
        "temperature": tier_spec.temperature if req.temperature is None else req.temperature,
    }
    if effort is not None and effort in spec.reasoning_efforts:
        params["reasoning_effort"] = effort
    if spec.hide_reasoning == "include_reasoning":
        params["include_reasoning"] = False
    elif spec.hide_reasoning == "reasoning_format":
        params["reasoning_format"] = "hidden"
    return params


def read_verdict(content: str | None, answer: str = "verdict") -> Verdict:
    """The verdict in a model's message content (`answer` review: with its findings); BadAnswer
    when it is not one."""
    try:
        verdict = decode_verdict(content or "")
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise BadAnswer(f"answer violates the verdict schema: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadAnswer("answer is not valid JSON") from exc
    if answer == "review" and verdict.findings is msgspec.UNSET:
        raise BadAnswer("answer violates the review schema: Object missing required field `findings`")
    return verdict
