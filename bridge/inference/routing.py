"""Tier `auto`: which tier, and which of its models, a judgment goes to, from what it needs.

Three needs, each a filter over the catalog's models, checked in this order:

1. **context**: the rendered prompt's estimated tokens plus the tier's completion budget must fit
   the model's context window;
2. **schema**: a request with `strict_schema` needs a model with strict `json_schema` output;
3. **deadline**: the model's expected latency (`LatencyBook.expected_ms`: its measured p90 from
   the worker's own calls, the catalog's typical latency until it has some) must fit the budget.

The chosen tier is the first tier, fastest first, with a model that meets all three. Its models that
do are spread by load (fewest calls in flight, then lowest expected latency, then round-robin); the
models of the other tiers that meet them follow as fallbacks. When no model meets the deadline the
route keeps the fastest that meet the rest (the engine's budget still ends the call: fail closed,
never allow) and says so; when none meets context or schema the request is refused (422).

Tokens are estimated, not counted: 3 bytes per token over the rendered messages overestimates
English and JSON (about 4 bytes per token), so an estimate errs toward a larger context window.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

from bridge.inference.catalog import Catalog, ModelSpec, TierSpec
from bridge.inference.latency import LatencyBook
from bridge.inference.prompts import render
from bridge.inference.wire import InferRequest, InvalidInferRequest, Route

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 8
"""Per message: the role and the chat template's markers."""


def estimate_tokens(req: InferRequest) -> int:
    """The prompt's tokens, estimated from the messages the worker will send."""
    messages = render(req)
    size = sum(len(str(m.get("content", "")).encode()) for m in messages)
    return math.ceil(size / BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages)


@dataclass
class _Fit:
    model: str
    tier: str
    expected_ms: float
    source: str


class Router:
    """Chooses a route for each `auto` request; `inflight` is the engine's live count of calls per model."""

    def __init__(self, catalog: Catalog, latency: LatencyBook, inflight: Counter[str] | None = None) -> None:
        self.catalog = catalog
        self.latency = latency
        self.inflight: Counter[str] = inflight if inflight is not None else Counter()
        self._turn = itertools.count()

    def completion_budget(self, tier: TierSpec, spec: ModelSpec, req: InferRequest) -> int:
        return min(req.max_tokens or tier.max_tokens, tier.max_tokens, spec.max_completion_tokens)

    def choose(self, req: InferRequest, budget_ms: float) -> Route:
        tokens = estimate_tokens(req)
        refused: dict[str, str] = {}
        fits: list[_Fit] = []
        for tier_name, tier in self.catalog.tiers.items():
            for model in tier.models:
                spec = self.catalog.models[model]
                need = tokens + self.completion_budget(tier, spec, req)
                if need > spec.context_window:
                    refused.setdefault(model, f"{model}: context window {spec.context_window} < ~{need} tokens")
                    continue
                if req.strict_schema and not spec.json_schema_strict:
                    refused.setdefault(model, f"{model}: no strict JSON schema output")
                    continue
                expected, source = self.latency.expected_ms(model)
                fits.append(_Fit(model, tier_name, expected, source))
        if not fits:
            raise InvalidInferRequest(
                f"tier auto: no model fits this request (~{tokens} prompt tokens"
                f"{', strict JSON schema' if req.strict_schema else ''}): {'; '.join(refused.values())}",
                status=422, code="no_model_fits")
        in_time = [f for f in fits if f.expected_ms <= budget_ms]
        for f in fits:
            if in_time and f.expected_ms > budget_ms:
                refused.setdefault(f.model, f"{f.model}: {f.expected_ms:.0f} ms ({f.source}) over {budget_ms:.0f} ms")
        if in_time:
            chosen_tier = in_time[0].tier
            mine = self._spread([f for f in in_time if f.tier == chosen_tier])
            why = (f"{chosen_tier}: the fastest tier whose model fits ~{tokens} prompt tokens"
                   f"{' with strict JSON schema' if req.strict_schema else ''} and answers within {budget_ms:.0f} ms "
                   f"({mine[0].model}: {mine[0].expected_ms:.0f} ms, {mine[0].source})")
        else:
            fastest = min(fits, key=lambda f: f.expected_ms)
            chosen_tier = fastest.tier
            mine = self._spread([f for f in fits if f.tier == chosen_tier])
            why = (f"{chosen_tier}: no model is expected within {budget_ms:.0f} ms; the fastest that fits "
                   f"~{tokens} prompt tokens is {fastest.model} ({fastest.expected_ms:.0f} ms, {fastest.source})")
        if refused:
            why += f"; passed over: {'; '.join(refused.values())}"
        rest = sorted((f for f in (in_time or fits) if f.model not in {m.model for m in mine}),
                      key=lambda f: f.expected_ms)
        models = list(dict.fromkeys([f.model for f in mine] + [f.model for f in rest]))
        return Route(tier=chosen_tier, models=models, reason=why, estimated_tokens=tokens,
                     budget_ms=round(budget_ms, 1))

    def _spread(self, fits: list[_Fit]) -> list[_Fit]:
        """A tier's fitting models, least loaded first; ties rotate so equal models share the work."""
        turn = next(self._turn)
        n = len(fits)
        order = {f.model: (i - turn) % n for i, f in enumerate(fits)}
        return sorted(fits, key=lambda f: (self.inflight[f.model], round(f.expected_ms, -1), order[f.model]))
