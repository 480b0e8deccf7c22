"""Wire formats of the inference bridge: one place, msgspec structs on both ends.

The HTTP contract (gateway, what Rego's `http.send` calls) and the NATS contract
(`groq.infer.<tier>`, what the worker serves) carry the same JSON bodies:

    POST /v1/infer/{tier}   body = InferRequest   ->  200 InferReply | ErrorReply (4xx/5xx)
    NATS groq.infer.<tier>  data = InferRequest   ->  InferReply | ErrorReply
                                                      (+ Nats-Service-Error-Code on errors)

`Verdict` is what the *model* must answer (the structured-output schema); it never reaches a
caller unvalidated.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bridge.kernel.errors import BadRequest, GroqPolicyError, Unavailable
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, Decision

SUBJECT_PREFIX = "groq.infer"

# NATS headers between gateway and worker.
BUDGET_HEADER = "Groqpolicy-Budget-Ms"
"""Remaining budget of the caller in milliseconds, relative (clock skew between hosts cannot eat it)."""
MAX_AGE_HEADER = "Groqpolicy-Max-Age"
"""Seconds the gateway may let HTTP caches (OPA's inter-query cache) keep the reply."""

DEFAULT_DEADLINE_MS = 5_000
MAX_DEADLINE_MS = 120_000
MAX_BODY_BYTES = 64 * 1024

def subject_for(tier: str) -> str:
    return f"{SUBJECT_PREFIX}.{tier}"


class InferRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A policy's question for a tier. `context` is the policy input: untrusted data, never instructions."""

    question: str
    context: Any = None
    policy: str = ""
    constitutional_hash: str = CONSTITUTIONAL_HASH
    deadline_ms: int | None = None
    model: str | None = None
    """Optional model (or retired alias) tried first, before the tier's own models."""
    max_tokens: int | None = None
    """Completion budget; capped by the tier's and the model's limits. Default: the tier's."""
    temperature: float | None = None
    """Sampling temperature 0..2. Default: the tier's (0 for judgments, so answers repeat)."""


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    queue_time: float = 0.0
    prompt_time: float = 0.0
    completion_time: float = 0.0
    total_time: float = 0.0
    cost_usd: float = 0.0
    attempts: int = 0


class InferReply(msgspec.Struct):
    decision: Decision
    confidence: float
    rationale: str
    model: str
    tier: str
    cached: bool = False
    emulated: bool = False
    usage: Usage = msgspec.field(default_factory=Usage)
    latency_ms: float = 0.0
    constitutional_hash: str = CONSTITUTIONAL_HASH
    requested_model: str | msgspec.UnsetType = msgspec.UNSET
    resolved_from: str | msgspec.UnsetType = msgspec.UNSET
    """Both present only when the request named a retired model that the catalog resolved."""
    degraded: bool = False
    """True when no model produced a valid answer and the worker failed closed (`review`)."""
    reasons: list[str] = msgspec.field(default_factory=list)


class Verdict(msgspec.Struct, forbid_unknown_fields=True):
    """The model's answer. Anything that does not decode into this is a failed call."""

    decision: Decision
    confidence: float
    rationale: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be within 0..1, got {self.confidence}")


VERDICT_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "enum": ["allow", "deny", "review"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rationale": {"type": "string"},
    },
    "required": ["decision", "confidence", "rationale"],
    "additionalProperties": False,
}

_req_decoder = msgspec.json.Decoder(InferRequest)
_reply_decoder = msgspec.json.Decoder(InferReply)
_verdict_decoder = msgspec.json.Decoder(Verdict)
_encoder = msgspec.json.Encoder()


def decode_request(data: bytes) -> InferRequest:
    return _req_decoder.decode(data)


def decode_reply(data: bytes) -> InferReply:
    return _reply_decoder.decode(data)


def decode_verdict(data: bytes | str) -> Verdict:
    return _verdict_decoder.decode(data)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


class InvalidInferRequest(BadRequest):
    """An inference request the bridge cannot use (the status says how: 400, 404, 422)."""

    type = "invalid_request_error"
    code = "bad_request"


class NoWorker(Unavailable):
    """No inference worker answers for the tier."""

    type = "unavailable_error"
    code = "no_worker"


def bridge_error(message: str, type_: str, code: str, status: int = 400) -> GroqPolicyError:
    """An error of the bridge's own routing (unknown path, wrong method), as the family's error."""
    return GroqPolicyError(message, status=status, type_=type_, code=code)


def validate_request(req: InferRequest) -> None:
    """Checks msgspec's types cannot express; raises InvalidInferRequest (422)."""
    if req.constitutional_hash != CONSTITUTIONAL_HASH:
        raise InvalidInferRequest(
            f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, got: {req.constitutional_hash})",
            status=422, code="constitutional_hash_mismatch",
        )
    if not req.question.strip():
        raise InvalidInferRequest("question: must not be empty", status=422, code="empty_question")
    if req.max_tokens is not None and not 1 <= req.max_tokens <= 65_536:
        raise InvalidInferRequest(f"max_tokens: must be within 1..65536, got {req.max_tokens}", status=422, code="bad_max_tokens")
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise InvalidInferRequest(f"temperature: must be within 0..2, got {req.temperature}", status=422, code="bad_temperature")
    if req.deadline_ms is not None and not 1 <= req.deadline_ms <= MAX_DEADLINE_MS:
        raise InvalidInferRequest(
            f"deadline_ms: must be within 1..{MAX_DEADLINE_MS}, got {req.deadline_ms}", status=422, code="bad_deadline"
        )
