"""The tier catalog: which Groq models serve which tier, what they cost, and the retired names.

Data lives in `tiers.json` next to this file (or `$GROQPOLICY_TIER_CATALOG`); this module only
loads and checks it. The tiers themselves and their latency targets are not the catalog's: they
are `bridge.kernel.vocabulary.TIERS` / `TIER_TARGET_MS`, and a catalog must configure exactly those
tiers. `Catalog.resolve("llama-3.1-8b-instant")` answers
`("openai/gpt-oss-20b", "llama-3.1-8b-instant")`: callers must say that an alias was resolved.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from bridge.kernel.config import GroqSettings
from bridge.kernel.errors import GroqPolicyError
from bridge.kernel.vocabulary import TIER_TARGET_MS, TIERS

CATALOG_PATH = Path(__file__).with_name("tiers.json")
# the values Groq's API accepts (the SDK's own Literal types); the catalog file is checked against them
ReasoningEffort = Literal["none", "default", "low", "medium", "high"]
HideReasoning = Literal["include_reasoning", "reasoning_format"]


class CatalogError(GroqPolicyError):
    """The catalog file is unreadable or inconsistent, or a name is not in it."""


class ModelSpec(msgspec.Struct, frozen=True):
    owned_by: str
    context_window: int
    max_completion_tokens: int
    json_schema_strict: bool
    price_input_per_mtok: float
    price_output_per_mtok: float
    typical_latency_ms: float
    reasoning: bool = False
    reasoning_efforts: list[ReasoningEffort] = []
    hide_reasoning: HideReasoning | None = None
    """`include_reasoning` (send false) or `reasoning_format` (send "hidden"); None: nothing to hide."""
    price_approximate: bool = False
    note: str = ""
    id: str = ""

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input_per_mtok + completion_tokens * self.price_output_per_mtok) / 1e6

    @property
    def cost_per_token(self) -> float:
        """Blended USD per token (the service design's single `cost_per_token`): mean of input and output price."""
        return (self.price_input_per_mtok + self.price_output_per_mtok) / 2e6


class TierSpec(msgspec.Struct, frozen=True):
    models: list[str]
    fallback_tier: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    cache_ttl_s: int = 300
    reasoning_effort: ReasoningEffort | None = None
    name: str = ""

    @property
    def latency_target_ms(self) -> float:
        """The tier's target from the shared vocabulary (the catalog does not restate it)."""
        return TIER_TARGET_MS[self.name]


class Alias(msgspec.Struct, frozen=True):
    to: str
    retired: str = ""


class _File(msgspec.Struct):
    as_of: str
    models: dict[str, ModelSpec]
    tiers: dict[str, TierSpec]
    aliases: dict[str, Alias] = {}
    default_tier: str = "fast"
    batch_discount: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.5
    """What the Batch API charges, as a fraction of the list price (GroqCloud: 50%)."""
    _comment: Any = None


def _check_tier_names(tiers: dict[str, TierSpec], where: str) -> None:
    """The catalog configures exactly the vocabulary's tiers: each one, and no other."""
    if missing := [t for t in TIERS if t not in tiers]:
        raise CatalogError(f"{where}: tiers: missing {', '.join(missing)} (every tier needs models: {', '.join(TIERS)})")
    if unknown := sorted(set(tiers) - set(TIERS)):
        raise CatalogError(f"{where}: tiers: unknown {', '.join(unknown)} (the tiers are: {', '.join(TIERS)})")


class Catalog:
    def __init__(self, data: _File, source: str) -> None:
        self.source = source
        _check_tier_names(data.tiers, source)
        self.as_of = data.as_of
        self.default_tier = data.default_tier
        self.batch_discount = data.batch_discount
        self.models = {k: msgspec.structs.replace(v, id=k) for k, v in data.models.items()}
        # in the vocabulary's order (fastest first), whatever the file's order
        self.tiers = {k: msgspec.structs.replace(data.tiers[k], name=k) for k in TIERS}
        self.aliases = dict(data.aliases)
        self._check()

    def _check(self) -> None:
        where = self.source
        for name, tier in self.tiers.items():
            if not tier.models:
                raise CatalogError(f"{where}: tiers.{name}.models: empty (expected at least one model)")
            for m in tier.models:
                if m not in self.models:
                    raise CatalogError(f"{where}: tiers.{name}.models: unknown model {m!r}")
            if tier.fallback_tier is not None and tier.fallback_tier not in self.tiers:
                raise CatalogError(f"{where}: tiers.{name}.fallback_tier: unknown tier {tier.fallback_tier!r}")
        for alias, target in self.aliases.items():
            if target.to not in self.models:
                raise CatalogError(f"{where}: aliases.{alias}: resolves to unknown model {target.to!r}")
            if alias in self.models:
                raise CatalogError(f"{where}: aliases.{alias}: shadows a current model")

    def resolve(self, model_name: str) -> tuple[str, str | None]:
        """(current model id, the retired name it was resolved from or None); CatalogError when unknown."""
        if model_name in self.models:
            return model_name, None
        alias = self.aliases.get(model_name)
        if alias is not None:
            return alias.to, model_name
        raise CatalogError(f"model {model_name!r}: not in the catalog (known: {', '.join(sorted(self.models))})")

    def model(self, model_id: str) -> ModelSpec:
        return self.models[self.resolve(model_id)[0]]

    def tier(self, name: str) -> TierSpec:
        try:
            return self.tiers[name]
        except KeyError:
            raise CatalogError(f"tier {name!r}: unknown (known: {', '.join(TIERS)})") from None

    def tier_of(self, model_id: str) -> str:
        """The first tier whose primary is `model_id` (else the first tier listing it)."""
        for name, t in self.tiers.items():
            if t.models[0] == model_id:
                return name
        for name, t in self.tiers.items():
            if model_id in t.models:
                return name
        return self.default_tier

    def candidates(self, tier: str, preferred: str | None = None) -> list[str]:
        """Models to try for `tier`, in order: preferred, the tier's own, then its fallback tier's."""
        spec = self.tier(tier)
        order: list[str] = []
        if preferred:
            order.append(self.resolve(preferred)[0])
        order.extend(spec.models)
        if spec.fallback_tier:
            order.extend(self.tiers[spec.fallback_tier].models)
        return list(dict.fromkeys(order))  # first occurrence wins

    def models_listing(self) -> list[dict[str, Any]]:
        """The service design's `GET /api/v1/groq/models` shape, one row per (tier, primary model), plus extras."""
        rows = []
        for name, t in self.tiers.items():
            for model_id in t.models:
                spec = self.models[model_id]
                rows.append({
                    "model_name": model_id,
                    "performance_tier": name,
                    "max_tokens": t.max_tokens,
                    "cost_per_token": spec.cost_per_token,
                    "typical_latency_ms": spec.typical_latency_ms,
                    "latency_target_ms": t.latency_target_ms,
                    "price_input_per_mtok": spec.price_input_per_mtok,
                    "price_output_per_mtok": spec.price_output_per_mtok,
                    "json_schema_strict": spec.json_schema_strict,
                    "context_window": spec.context_window,
                    "batch_cost_per_token": spec.cost_per_token * self.batch_discount,
                    "primary": model_id == t.models[0],
                })
        return rows


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    p = Path(path) if path else (GroqSettings.from_env().tier_catalog or CATALOG_PATH)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{p}: unreadable ({exc.strerror})") from exc
    try:
        data = msgspec.json.decode(raw, type=_File)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"{p}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise CatalogError(f"{p}: not JSON ({exc})") from exc
    return Catalog(data, str(p))


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    return load_catalog()


def resolve(model_name: str) -> tuple[str, str | None]:
    """`default_catalog().resolve(...)`."""
    return default_catalog().resolve(model_name)
