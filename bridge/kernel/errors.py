"""One exception family for the whole product, and the one error body every edge answers with.

Every error raised on purpose is a `GroqPolicyError`: it carries the HTTP status it maps to, a
`type` (the body's error kind; the class name unless a class names one, as the inference bridge's
Groq-style kinds do) and, where a caller needs to tell errors apart by more than their kind, a
machine-readable `code` (left out of the body when empty). The HTTP edges (control plane, gateway) and the
NATS services (`policy.evaluate`, `groq.infer.<tier>`) all answer with `error_body(exc)`:

    {"error": {"type": ..., "message": ..., "code": ..., **details}}

On NATS the status goes into nats.micro's `Nats-Service-Error-Code` header (`ERROR_CODE_HEADER`),
so a gateway maps it 1:1 back to HTTP. Raise with `from exc` where a cause exists: the cause stays
on `__cause__` for logs, and the message shown to the caller is still this error's own.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

# nats.micro's error headers (nats.micro.request): the status of an error reply and its description
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
_DESCRIPTION_MAX = 512
# Every HTTP answer carries it; a 5xx (HTTP or NATS) names it in its body and its log line, so a
# caller's report finds the log. A caller's own id is kept only when it is this plain.
REQUEST_ID_HEADER = "X-Request-Id"
_PLAIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class GroqPolicyError(Exception):
    """Base for every error the product raises on purpose (never a bug)."""

    status: int = 500
    type: str = ""  # "" -> the class name
    code: str = ""  # "" -> no code in the body

    def __init__(self, message: str = "", *, status: int | None = None, code: str | None = None,
                 type_: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # per-instance overrides shadow the class's defaults
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        if type_ is not None:
            self.type = type_
        self.details: dict[str, Any] = details or {}

    @property
    def kind(self) -> str:
        """The body's `type`."""
        return self.type or type(self).__name__


class BadRequest(GroqPolicyError):
    """The caller's request cannot be used as sent."""

    status = 400


class NotFound(GroqPolicyError):
    status = 404


class Conflict(GroqPolicyError):
    status = 409


class Unprocessable(GroqPolicyError):
    """Well-formed, but not acceptable (a value out of range, an unknown constitution)."""

    status = 422


class Unavailable(GroqPolicyError):
    """A dependency is down or saturated; the caller may retry."""

    status = 503


class DeadlineExceeded(GroqPolicyError):
    """The caller's (or the evaluation's) deadline passed before an answer."""

    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class ConfigError(GroqPolicyError):
    """A configuration value (environment variable, file) that cannot be used as given."""


class ToolchainError(GroqPolicyError):
    """A required external binary (opa, nats-server, go) is missing or the wrong version."""


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """What a client reads back from an error body (extra details are ignored)."""

    message: str
    type: str
    code: str = ""


class ErrorReply(msgspec.Struct):
    error: ErrorDetail


_reply = msgspec.json.Decoder(ErrorReply)


def decode_error(data: bytes) -> ErrorReply:
    return _reply.decode(data)


_encode = msgspec.json.Encoder().encode


def error_document(exc: GroqPolicyError) -> dict[str, Any]:
    """The error body as a document (`{"error": {...}}`), details included."""
    detail: dict[str, Any] = {"type": exc.kind, "message": exc.message}
    if exc.code:
        detail["code"] = exc.code
    detail.update(exc.details)
    return {"error": detail}


def error_body(exc: GroqPolicyError) -> bytes:
    """The error body as JSON bytes."""
    return _encode(error_document(exc))


def request_id(given: str | bytes | None = None) -> str:
    """The caller's request id when it is short and plain, else a fresh one (a UUID)."""
    text = given.decode("latin-1") if isinstance(given, bytes) else given
    return text if text and _PLAIN_ID.fullmatch(text) else str(uuid.uuid4())


def error_description(message: str) -> str:
    """A message as one header line (a header value cannot hold CR/LF), bounded."""
    return " ".join(message.split())[:_DESCRIPTION_MAX]
