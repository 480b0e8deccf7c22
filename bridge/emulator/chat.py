"""`POST /openai/v1/chat/completions` as GroqCloud answers it: the request's checks (with Groq's
messages), the faults' error replies, the answer's content and the completion's shape.

Every refusal is a `GroqAPIError`: the kernel's error family, so its body is the one every edge
of the product writes (`error_document`), which is also GroqCloud's `{"error": {"message",
"type", "code"}}`; it carries the response headers Groq sends with it (`retry-after`, rate limits).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.emulator.behaviour import ModelBehaviour
from bridge.inference.catalog import Catalog, ModelSpec
from bridge.kernel.errors import GroqPolicyError

INVALID = "invalid_request_error"
_JSON_MODES = ("json_object", "json_schema")


class GroqAPIError(GroqPolicyError):
    """An error reply as GroqCloud sends it: status, Groq's `type` and `code`, and response headers."""

    def __init__(self, status: int, message: str, type_: str = INVALID, code: str = "invalid_request",
                 headers: dict[str, Any] | None = None) -> None:
        super().__init__(message, status=status, type_=type_, code=code)
        self.headers: dict[str, Any] = headers or {}


@dataclass
class ChatCall:
    """A chat completion request that passed Groq's checks."""

    model: str
    spec: ModelSpec
    texts: list[str]  # each message's text ("" where it has none)
    user_text: str  # the user messages' text: what the emulated judgment reads
    format: str  # response_format.type: text, json_object or json_schema
    strict: bool
    schema: dict[str, Any]
    reasoning: dict[str, Any]  # reasoning_effort, reasoning_format, include_reasoning: those given
    sampling: dict[str, Any]  # max_completion_tokens, temperature: those given
    service_tier: str


def parse_chat(body: bytes, catalog: Catalog) -> ChatCall:
    """The request, checked as GroqCloud checks it (its messages, its order); GroqAPIError if refused."""
    try:
        req = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise GroqAPIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from exc
    if not isinstance(req, dict):
        raise GroqAPIError(400, "'body': expected an object")
    model, spec = _model(req.get("model"), catalog)
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GroqAPIError(400, "'messages' : minimum number of items is 1")
    if req.get("stream"):
        raise GroqAPIError(400, "stream: not supported by the groqpolicy emulator")
    reasoning = {k: req[k] for k in ("reasoning_effort", "reasoning_format", "include_reasoning") if req.get(k) is not None}
    _check_reasoning(reasoning, spec)
    texts = [m["content"] if isinstance(m, dict) and isinstance(m.get("content"), str) else "" for m in messages]
    user_text = "\n".join(t for m, t in zip(messages, texts, strict=True) if isinstance(m, dict) and m.get("role") == "user")
    rf = req.get("response_format") or {"type": "text"}
    rf_type = rf.get("type", "text") if isinstance(rf, dict) else "text"
    json_schema = rf.get("json_schema") if rf_type == "json_schema" else None
    json_schema = json_schema if isinstance(json_schema, dict) else {}
    strict = bool(json_schema.get("strict"))
    if strict and not spec.json_schema_strict:
        raise GroqAPIError(400, f"`response_format.json_schema.strict` is not supported with model `{model}`; "
                                "use strict: false or json_object")
    return ChatCall(model=model, spec=spec, texts=texts, user_text=user_text, format=rf_type, strict=strict,
                    schema=json_schema.get("schema") or {}, reasoning=reasoning,
                    sampling={k: req[k] for k in ("max_completion_tokens", "temperature") if req.get(k) is not None},
                    service_tier=req.get("service_tier") or "on_demand")


def _model(model: Any, catalog: Catalog) -> tuple[str, ModelSpec]:
    if not isinstance(model, str):
        raise GroqAPIError(400, "'model' : property 'model' is missing")
    if model in catalog.aliases:
        raise GroqAPIError(400, f"The model `{model}` has been decommissioned and is no longer supported. Please refer "
                                "to https://console.groq.com/docs/deprecations for a recommendation on which model to "
                                "use instead.", code="model_decommissioned")
    if model not in catalog.models:
        raise model_not_found(model)
    return model, catalog.models[model]


def model_not_found(model: str) -> GroqAPIError:
    return GroqAPIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                        code="model_not_found")


def _check_reasoning(given: dict[str, Any], spec: ModelSpec) -> None:
    fmt, incl, effort = given.get("reasoning_format"), given.get("include_reasoning"), given.get("reasoning_effort")
    if fmt is not None and incl is not None:
        raise GroqAPIError(400, "`include_reasoning` and `reasoning_format` are mutually exclusive")
    if (fmt is not None or incl is not None) and not spec.reasoning:
        which = "reasoning_format" if fmt is not None else "include_reasoning"
        raise GroqAPIError(400, f"`{which}` is not supported with this model")
    if effort is not None and effort not in spec.reasoning_efforts:
        raise GroqAPIError(400, f"`reasoning_effort` value `{effort}` is not supported with this model "
                                f"(supported: {', '.join(spec.reasoning_efforts) or 'none'})")


def check_json_mode(call: ChatCall) -> None:
    """Raw reasoning cannot share the answer with JSON mode (checked after the call is counted, as Groq bills it)."""
    if call.reasoning.get("reasoning_format") == "raw" and call.format in _JSON_MODES:
        raise GroqAPIError(400, "`reasoning_format` raw is not supported with JSON mode")


def fault_error(fault: str | None, model: str, behaviour: ModelBehaviour, ratelimit: dict[str, Any]) -> GroqAPIError | None:
    """The error reply a fault is served as (None for the faults that shape the answer instead)."""
    if fault == "429":
        return GroqAPIError(
            429, f"Rate limit reached for model `{model}` in organization `org_emulated` service tier `on_demand` on "
                 f"requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in "
                 f"{behaviour.retry_after_s:g}s.", "requests", "rate_limit_exceeded",
            {**ratelimit, "x-ratelimit-remaining-requests": 0, "retry-after": f"{behaviour.retry_after_s:g}"})
    if fault == "498":
        return GroqAPIError(498, "Capacity exceeded for flex tier, please try again later or use the on_demand service "
                                 "tier.", "capacity_exceeded", "capacity_exceeded", ratelimit)
    if fault == "500":
        return GroqAPIError(500, "Internal Server Error", "internal_server_error", "internal_server_error", ratelimit)
    if fault == "503":
        return GroqAPIError(503, "Service Unavailable: the model is over capacity", "internal_server_error",
                            "service_unavailable", ratelimit)
    if fault == "json_validate_failed":
        return GroqAPIError(400, "Failed to generate JSON. Please adjust your prompt. See 'failed_generation' for more "
                                 "details.", code="json_validate_failed")
    return None


def content_for(call: ChatCall, fault: str | None, verdict: tuple[str, float, str]) -> str:
    """The assistant message: the verdict in the format asked for, or broken as a fault says."""
    if fault == "malformed":
        return '{"decision": "allow", "confidence": 0.9, "rationale": "unterminated'
    if fault == "schema_violation":
        return '{"verdict": "yes", "confidence": 7}'
    if call.format == "json_schema":
        return msgspec.json.encode(instance_of(call.schema, verdict, findings_for(call.user_text, verdict))).decode()
    if call.format == "json_object":
        return msgspec.json.encode({"decision": verdict[0], "confidence": verdict[1], "rationale": verdict[2]}).decode()
    return f"DECISION: {verdict[0]}\nCONFIDENCE: {verdict[1]}\nRATIONALE: {verdict[2]}"


_PRINCIPLE_RE = re.compile(r"\bP\d+-[a-z0-9]+(?:-[a-z0-9]+)*")
_SEVERITY = {"deny": "high", "review": "medium", "allow": "low"}


def findings_for(user_text: str, verdict: tuple[str, float, str]) -> list[dict[str, str]]:
    """A review's findings, deterministic: one per principle id the request names (the first three,
    in order; "general" when it names none), graded by the verdict, saying what the verdict read."""
    named = list(dict.fromkeys(_PRINCIPLE_RE.findall(user_text)))[:3] or ["general"]
    return [{"principle": p, "severity": _SEVERITY[verdict[0]], "text": f"{verdict[2]} (read against {p})"}
            for p in named]


def instance_of(schema: dict[str, Any], verdict: tuple[str, float, str],
                findings: list[dict[str, str]] | None = None) -> Any:
    """A value valid under a (strict-subset) JSON schema, using the verdict where names fit (and
    `findings` for a property of that name)."""
    t = schema.get("type")
    if "enum" in schema:
        return verdict[0] if verdict[0] in schema["enum"] else schema["enum"][0]
    if t == "object":
        out = {}
        for name, sub in (schema.get("properties") or {}).items():
            if name == "decision" and "enum" in sub:
                out[name] = verdict[0] if verdict[0] in sub["enum"] else sub["enum"][0]
            elif name == "confidence":
                out[name] = verdict[1]
            elif name in ("rationale", "reason", "explanation"):
                out[name] = verdict[2]
            elif name == "findings" and findings is not None and sub.get("type") == "array":
                out[name] = findings
            else:
                out[name] = instance_of(sub, verdict)
        return out
    if t == "array":
        return []
    if t in ("number", "integer"):
        return 0 if t == "integer" else 0.5
    if t == "boolean":
        return verdict[0] == "allow"
    return ""


def tokens(text: str) -> int:
    """A token count good enough for usage figures: four characters a token."""
    return max(1, len(text) // 4)


def completion(call: ChatCall, content: str, behaviour: ModelBehaviour, *, started: float, queue_time: float,
               seq: int, seed: int) -> dict[str, Any]:
    """The chat.completion object, with Groq's usage timings and `x_groq`."""
    prompt_tokens = sum(tokens(t) for t in call.texts)
    completion_tokens = tokens(content)
    prompt_time = prompt_tokens / 20_000
    completion_time = completion_tokens / behaviour.tokens_per_s
    total_time = max(prompt_time + completion_time, time.perf_counter() - started)
    return {
        "id": f"chatcmpl-{uuid.uuid4()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"queue_time": round(queue_time, 6), "prompt_tokens": prompt_tokens, "prompt_time": round(prompt_time, 6),
                  "completion_tokens": completion_tokens, "completion_time": round(completion_time, 6),
                  "total_tokens": prompt_tokens + completion_tokens, "total_time": round(total_time, 6)},
        "usage_breakdown": None,
        "system_fingerprint": "fp_emulated",
        "x_groq": {"id": f"req_emulated_{seq:08d}", "seed": seed},
        "service_tier": call.service_tier,
    }
