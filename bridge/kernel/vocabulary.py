"""The words every part of groqpolicy shares: tiers and their latency targets, decisions, and the
constitution every decision is checked against (identified by its hash).

This is their only home: the tier catalog (`bridge/inference/catalog/tiers.json`) is validated
against `TIERS`, and the policies API, the pipeline, the audit trail and the wire formats import
them from here.
"""

from __future__ import annotations

from typing import Literal

from bridge.kernel.errors import Unprocessable

CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"

Tier = Literal["nano", "fast", "balanced", "premium", "reasoning"]
# Latency targets per tier (ms), in the tiers' order from fastest to slowest. A model call costs
# 100 ms or more: the targets below `reasoning` hold only on cached or rule-only paths.
TIER_TARGET_MS: dict[str, float] = {"nano": 1.0, "fast": 2.0, "balanced": 3.0, "premium": 5.0, "reasoning": 1000.0}
TIERS: tuple[str, ...] = tuple(TIER_TARGET_MS)
TIER_RANK: dict[str, int] = {t: i for i, t in enumerate(TIERS)}
# Not a tier but a request for one: the worker picks the tier from what the judgment needs
# (context size, the caller's deadline against measured latency, the answer's schema).
AUTO_TIER = "auto"
RoutableTier = Literal["nano", "fast", "balanced", "premium", "reasoning", "auto"]
ROUTABLE_TIERS: tuple[str, ...] = (*TIERS, AUTO_TIER)

Decision = Literal["allow", "deny", "review"]
DECISIONS: tuple[str, ...] = ("allow", "deny", "review")
# deny overrides review overrides allow; anything unknown counts as deny
DECISION_RANK: dict[str, int] = {"allow": 0, "review": 1, "deny": 2}

# The lowest confidence at which a model's judgment (and so an allow that rests on one) stands
# without a human looking at it; below it, the answer is `review`. The pipeline's model stage holds
# answers to it, and every bundle carries it as `data.groqpolicy.config.min_allow_confidence`,
# which the constitution's post-validation reads (rego/constitution/constitution.rego).
MIN_MODEL_CONFIDENCE = 0.7


def strictest(a: str, b: str) -> str:
    """The stricter of two decisions."""
    return a if DECISION_RANK.get(a, 2) >= DECISION_RANK.get(b, 2) else b


class ConstitutionalHashMismatch(Unprocessable):
    """A request names a constitution other than the one this service enforces."""

    code = "constitutional_hash_mismatch"


def check_hash(value: str | None) -> None:
    """Refuse a request that does not name this constitution (422 with the expected hash)."""
    if value != CONSTITUTIONAL_HASH:
        raise ConstitutionalHashMismatch(
            f"constitutional_hash: unknown constitution (want: {CONSTITUTIONAL_HASH}, got: {value!r})")
