"""What the emulated models do: their deterministic judgment, their latency and their faults.

The verdict comes from keyword rules over the *user* messages (injection/harm markers -> deny,
`<review>`-style markers -> review, else allow) and the confidence from a hash of them, so the
same prompt always gets the same answer. Faults and latency are per model (`ModelBehaviour`),
configured as a whole (`EmulatorConfig`) or forced by a marker in a message (`MARKER_RE`).
"""

from __future__ import annotations

import hashlib
import re

import msgspec

FAULTS = ("429", "498", "500", "503", "timeout", "malformed", "schema_violation", "json_validate_failed")
MARKER_RE = re.compile(r"\[\[groq-emulator:([a-z0-9_=]+)\]\]")
SLOW_RE = re.compile(r"slow=\d+")

DENY_MARKERS = (
    "ignore previous instructions", "ignore all previous", "ignore the above", "disregard previous",
    "disregard the above", "jailbreak", "reveal your system prompt", "exfiltrate", "rm -rf",
    "drop table", "build a bomb", "make a weapon", "malware", "steal credentials", "<deny>",
)
REVIEW_MARKERS = ("<review>", "ambiguous", "not sure whether")


class ModelBehaviour(msgspec.Struct, omit_defaults=True):
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_429: float = 0.0
    rate_498: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_schema_violation: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    tokens_per_s: float = 800.0

    def fault_rates(self) -> tuple[tuple[str, float], ...]:
        """(fault, probability) for the faults drawn at random, in the order they are drawn."""
        return (("429", self.rate_429), ("498", self.rate_498), ("500", self.rate_500), ("timeout", self.rate_timeout),
                ("malformed", self.rate_malformed), ("schema_violation", self.rate_schema_violation))


class EmulatorConfig(msgspec.Struct):
    default: ModelBehaviour = msgspec.field(default_factory=ModelBehaviour)
    models: dict[str, ModelBehaviour] = msgspec.field(default_factory=dict)
    api_key: str | None = None
    """When set, requests must carry `Authorization: Bearer <api_key>` (else 401 invalid_api_key)."""
    seed: int = 0
    requests_per_day: int = 14_400
    tokens_per_minute: int = 250_000
    batch_parallelism: int = 256
    """Batch API lines answered at a time (GroqCloud runs batches on its own capacity, out of band)."""

    def behaviour(self, model: str) -> ModelBehaviour:
        return self.models.get(model, self.default)


def check_fault(fault: str) -> None:
    """ValueError unless `fault` is one the emulator can serve."""
    if fault not in FAULTS and not SLOW_RE.fullmatch(fault):
        raise ValueError(f"fault {fault!r}: unknown (known: {', '.join(FAULTS)}, slow=<ms>)")


def verdict_for(user_text: str) -> tuple[str, float, str]:
    """(decision, confidence, rationale): the emulated model's deterministic judgment."""
    low = user_text.lower()
    digest = hashlib.sha256(user_text.encode()).digest()
    jitter = digest[0] % 15 / 100
    for marker in DENY_MARKERS:
        if marker in low:
            return "deny", round(0.85 + jitter, 2), f"emulated: matched risk marker {marker!r}"
    for marker in REVIEW_MARKERS:
        if marker in low:
            return "review", round(0.5 + jitter, 2), f"emulated: matched uncertainty marker {marker!r}"
    return "allow", round(0.8 + jitter, 2), "emulated: no risk markers found"
