"""Wire formats of the inference bridge: one place, msgspec structs on both ends.

The HTTP contract (gateway, what Rego's `http.send` calls) and the NATS contract
(`groq.infer.<tier>`, what the worker serves) carry the same JSON bodies:

    POST /v1/infer/{tier}   body = InferRequest   ->  200 InferReply | ErrorReply (4xx/5xx)
    NATS groq.infer.<tier>  data = InferRequest   ->  InferReply | ErrorReply
                                                      (+ Nats-Service-Error-Code on errors)

Ranges are declared on the structs (`msgspec.Meta`), so the decoder enforces them; `read_request`
turns a violation into the bridge's error, naming the field and its declared range. `Verdict` is
what the *model* must answer (the structured-output schema); it never reaches a caller unvalidated.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect

from bridge.kernel.errors import BadRequest, GroqPolicyError, NotFound, Unavailable
from bridge.kernel.untrusted import MAX_JSON_DEPTH, json_depth_exceeds
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH, Decision

SUBJECT_PREFIX = "groq.infer"
WORKER_SERVICE = "groqpolicy-inference"
"""The workers' nats.micro service name: `$SRV.STATS.groqpolicy-inference` reaches every worker."""

# NATS headers between gateway and worker.
BUDGET_HEADER = "Groqpolicy-Budget-Ms"
"""Remaining budget of the caller in milliseconds, relative (clock skew between hosts cannot eat it)."""
MAX_AGE_HEADER = "Groqpolicy-Max-Age"
"""Seconds the gateway may let HTTP caches (OPA's inter-query cache) keep the reply."""

MAX_DEADLINE_MS = 120_000


def header_budget_ms(headers: dict[str, str] | None, most: int = MAX_DEADLINE_MS) -> int | None:
    """The caller's budget from `BUDGET_HEADER`, 1..`most` ms; None when absent or unreadable
    ("nan", "inf", "1e999", not a number): the receiver falls back to its own default then."""
    raw = (headers or {}).get(BUDGET_HEADER)
    if not raw:
        return None
    try:
        return max(1, min(int(float(raw)), most))
    except (ValueError, OverflowError):
        return None
MAX_BODY_BYTES = 64 * 1024
MAX_COMPLETION_TOKENS = 65_536

DeadlineMs = Annotated[int, msgspec.Meta(ge=1, le=MAX_DEADLINE_MS)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_COMPLETION_TOKENS)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def subject_for(tier: str) -> str:
    return f"{SUBJECT_PREFIX}.{tier}"


class InferRequest(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A policy's question for a tier. `context` is the policy input: untrusted data, never instructions."""

    question: str
    context: Any = None
    policy: str = ""
    constitutional_hash: str = CONSTITUTIONAL_HASH
    deadline_ms: DeadlineMs | None = None
    model: str | None = None
    """Optional model (or retired alias) tried first, before the tier's own models."""
    max_tokens: MaxTokens | None = None
    """Completion budget; capped by the tier's and the model's limits. Default: the tier's."""
    temperature: Temperature | None = None
    """Sampling temperature. Default: the tier's (0 for judgments, so answers repeat)."""
    strict_schema: bool = False
    """The answer must come from a model that enforces the verdict's JSON schema (strict structured
    output); JSON mode plus validation is not enough. Tier `auto` routes only to such models."""
    answer: Literal["verdict", "review"] = "verdict"
    """`review`: the verdict with its `findings` (`REVIEW_JSON_SCHEMA`), as a policy review needs."""


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


class Route(msgspec.Struct, omit_defaults=True):
    """Why tier `auto` chose what it chose (in the reply, and so in the audit record)."""

    tier: str
    models: list[str]
    reason: str
    estimated_tokens: int = 0
    budget_ms: float = 0.0


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
    route: Route | msgspec.UnsetType = msgspec.UNSET
    """Present when the request asked for tier `auto`: the tier chosen, its models in order, and why."""
    findings: list[Finding] | msgspec.UnsetType = msgspec.UNSET
    """Present when the request asked for `answer: review`: the model's findings."""


class Finding(msgspec.Struct, forbid_unknown_fields=True):
    """One thing a reviewing model found: the principle it concerns, how grave, in one sentence."""

    principle: str
    severity: Literal["high", "medium", "low"]
    text: str

    def __str__(self) -> str:
        return f"{self.principle} ({self.severity}): {self.text}"


class Verdict(msgspec.Struct, forbid_unknown_fields=True):
    """The model's answer. Anything that does not decode into this is a failed call (a review's
    answer must carry `findings`: `bridge.inference.completion.read_verdict`)."""

    decision: Decision
    confidence: Confidence
    rationale: str
    findings: list[Finding] | msgspec.UnsetType = msgspec.UNSET


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

_FINDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "principle": {"type": "string"},
        "severity": {"type": "string", "enum": ["high", "medium", "low"]},
        "text": {"type": "string"},
    },
    "required": ["principle", "severity", "text"],
    "additionalProperties": False,
}
REVIEW_JSON_SCHEMA: dict[str, Any] = {
    **VERDICT_JSON_SCHEMA,
    "properties": {**VERDICT_JSON_SCHEMA["properties"], "findings": {"type": "array", "items": _FINDING_SCHEMA}},
    "required": [*VERDICT_JSON_SCHEMA["required"], "findings"],
}

_req_decoder = msgspec.json.Decoder(InferRequest)
_reply_decoder = msgspec.json.Decoder(InferReply)
_verdict_decoder = msgspec.json.Decoder(Verdict)
_encoder = msgspec.json.Encoder()


def decode_request(data: bytes) -> InferRequest:
    """The request as msgspec decodes it (types and declared ranges); `read_request` adds the bridge's errors."""
    return _req_decoder.decode(data)


def decode_reply(data: bytes) -> InferReply:
    return _reply_decoder.decode(data)


def decode_verdict(data: bytes | str) -> Verdict:
    return _verdict_decoder.decode(data)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


# ---- errors ----------------------------------------------------------------------------------
# The bridge's error kinds are Groq's (`invalid_request_error`, ...), so a caller that knows
# Groq's API reads ours the same way.

class InvalidInferRequest(BadRequest):
    """An inference request the bridge cannot use (the status says how: 400, 404, 413, 422)."""

    type = "invalid_request_error"
    code = "bad_request"


class UnknownRoute(NotFound):
    type = "invalid_request_error"
    code = "not_found"


class Unauthenticated(GroqPolicyError):
    """A request to the gateway without its bridge token (Groq's own 401 body shape)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class MethodNotAllowed(GroqPolicyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class NoWorker(Unavailable):
    """No inference worker answers for the tier."""

    type = "unavailable_error"
    code = "no_worker"


class WorkerError(GroqPolicyError):
    """A worker's error reply that carried no body of its own."""

    status = 502
    type = "worker_error"
    code = "worker_error"


class InternalError(GroqPolicyError):
    """A bug, reported as one (500) instead of a hanging request."""

    type = "internal_error"
    code = "internal_error"


# Which error code each declared range reports; a ranged field without one fails at import.
_RANGE_CODES = {"deadline_ms": "bad_deadline", "max_tokens": "bad_max_tokens", "temperature": "bad_temperature"}


def _declared_ranges(struct: type[msgspec.Struct]) -> dict[str, tuple[float, float, str]]:
    """{field: (lowest, highest, error code)} as the struct's `Meta(ge=, le=)` declare them."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    out: dict[str, tuple[float, float, str]] = {}
    for field in info.fields:
        kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        for kind in kinds:
            if isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType) and kind.ge is not None \
                    and kind.le is not None:
                out[field.name] = (kind.ge, kind.le, _RANGE_CODES[field.name])
    return out


_RANGES = _declared_ranges(InferRequest)
_AT_FIELD = re.compile(r" - at `\$\.(\w+)`$")


def _invalid(data: bytes, exc: msgspec.ValidationError, label: str) -> InvalidInferRequest:
    """A decode error as the bridge reports it: a value outside its declared range names the field,
    the range and the value (with its own code); anything else keeps msgspec's message."""
    at = _AT_FIELD.search(str(exc))
    declared = _RANGES.get(at.group(1)) if at else None
    if at and declared:
        lo, hi, code = declared
        value = msgspec.json.decode(data).get(at.group(1))  # decodes: only the field's value was wrong
        if isinstance(value, int | float) and not isinstance(value, bool) and not lo <= value <= hi:
            return InvalidInferRequest(f"{at.group(1)}: must be within {lo:g}..{hi:g}, got {value}", status=422,
                                       code=code)
    return InvalidInferRequest(f"{label}: {exc}", status=422, code="invalid_request")


def validate_request(req: InferRequest) -> None:
    """What the declared types cannot say; raises InvalidInferRequest (422)."""
    if req.constitutional_hash != CONSTITUTIONAL_HASH:
        raise InvalidInferRequest(
            f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, got: {req.constitutional_hash})",
            status=422, code="constitutional_hash_mismatch",
        )
    if not req.question.strip():
        raise InvalidInferRequest("question: must not be empty", status=422, code="empty_question")


def read_request(data: bytes, *, label: str = "body") -> InferRequest:
    """Decode and check a request. Every failure is an InvalidInferRequest: 400 not JSON, 422 invalid
    (`label` names the request in the message: "body" over HTTP, "request" on NATS)."""
    if json_depth_exceeds(data):
        raise InvalidInferRequest(f"{label}: JSON nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects",
                                  status=400, code="json_too_deep")
    try:
        req = _req_decoder.decode(data)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise _invalid(data, exc, label) from None
    except msgspec.DecodeError as exc:
        raise InvalidInferRequest(f"{label}: not JSON ({exc})", status=400, code="invalid_json") from None
    validate_request(req)
    return req
