"""The audit trail's errors, on the product's one exception family (bridge.kernel.errors).

A decision whose record cannot be stored is not served: the trail raises `AuditUnavailable` (503,
the caller may retry) and the decision fails with it. The error body's `type` is the class name,
which clients read ("AuditUnavailable"). The specific classes also derive from the kernel's generic
ones (`Unavailable`, `BadRequest`), so code that only knows the kernel can still tell them apart.
"""

from __future__ import annotations

from bridge.kernel.errors import BadRequest, GroqPolicyError, Unavailable


class AuditError(GroqPolicyError):
    """The trail could not do what was asked, and it is not the caller's fault."""

    status = 500


class AuditUnavailable(AuditError, Unavailable):
    """JetStream did not acknowledge: the decision is not recorded, so it must not be served."""

    status = 503


class AuditRecordTooLarge(AuditError):
    """A record too large for a NATS message: the decision it records is not served."""

    status = 500


class AuditQueryError(AuditError, BadRequest):
    """A filter the trail cannot apply."""

    status = 400


class SpoolError(AuditError):
    """The spool cannot be written or read (disk full, permissions, a damaged cursor)."""

    status = 500
