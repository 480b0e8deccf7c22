"""The constitution every decision is checked against, identified by its hash."""

from __future__ import annotations

CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"
