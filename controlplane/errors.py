"""The control plane's base exception; each feature subclasses it and the HTTP edge maps it."""

from __future__ import annotations


class GroqPolicyError(Exception):
    """Base for every error the product raises on purpose (never a bug)."""

    status_code: int = 500


class ToolchainError(GroqPolicyError):
    """A required external binary (opa, nats-server, go) is missing or the wrong version."""
