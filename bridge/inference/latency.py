"""Measured model latency: per-model percentiles from the worker's own successful calls.

Each model keeps a DDSketch (Datadog's quantile sketch: 1% relative error at any quantile, a few
hundred bytes, mergeable) over a sliding window of two periods: the current one and the one before
it, so a model that got slower shows it within `window_s` and one quiet minute does not empty the
book. Sketches merge exactly, which is why the wire form (`snapshot`) is the sketch's bucket counts
rather than its percentiles: the control plane adds up the books of every worker.

The router reads `expected_ms` (the p90 once a model has `MIN_SAMPLES` calls, else the catalog's
typical latency): a deadline is checked against what the model did, not what it was said to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

RELATIVE_ACCURACY = 0.01
MIN_SAMPLES = 5
"""Below this many measured calls the catalog's typical latency stands in for the measurement."""
QUANTILES = (0.5, 0.9, 0.99)
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)


class _Sketch:
    """A DDSketch whose positive store this module holds, so its buckets can be read and sent."""

    __slots__ = ("sketch", "store")

    def __init__(self) -> None:
        self.store = DenseStore()
        self.sketch = BaseDDSketch(mapping=_MAPPING, store=self.store, negative_store=DenseStore(), zero_count=0.0)

    def buckets(self) -> dict[int, float]:
        return {self.store.offset + i: c for i, c in enumerate(self.store.bins) if c}


class ModelLatency:
    """One model's sliding window of latencies (milliseconds)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._current = _Sketch()
        self._previous = _Sketch()
        self._rotated = clock()

    def _rotate(self) -> None:
        now = self.clock()
        if now - self._rotated < self.window_s:
            return
        # a model idle for two whole windows has no recent measurement at all
        self._previous = self._current if now - self._rotated < 2 * self.window_s else _Sketch()
        self._current = _Sketch()
        self._rotated = now

    def add(self, ms: float) -> None:
        self._rotate()
        self._current.sketch.add(max(ms, 0.001))

    def merged(self) -> DDSketch:
        self._rotate()
        out = DDSketch(RELATIVE_ACCURACY)
        for part in (self._previous, self._current):
            if part.sketch.count:
                out.merge(part.sketch)
        return out

    def buckets(self) -> dict[int, float]:
        """The window's bucket counts (bucket key -> calls), the mergeable wire form."""
        self._rotate()
        out = self._previous.buckets()
        for k, c in self._current.buckets().items():
            out[k] = out.get(k, 0.0) + c
        return out


def summary(sketch: DDSketch) -> dict[str, Any]:
    """{count, p50_ms, p90_ms, p99_ms} of a sketch (percentiles None when it is empty)."""
    n = int(sketch.count)
    out: dict[str, Any] = {"count": n}
    for q in QUANTILES:
        value = sketch.get_quantile_value(q) if n else None
        out[f"p{round(q * 100)}_ms"] = round(value, 1) if value is not None else None
    return out


def from_buckets(books: list[dict[int, float]]) -> DDSketch:
    """One sketch from the bucket counts of several workers (exact: each bucket's value maps back to it)."""
    out = DDSketch(RELATIVE_ACCURACY)
    for book in books:
        for key, count in book.items():
            out.add(_MAPPING.value(int(key)), count)
    return out


class LatencyBook:
    """Per-model latency windows, with the catalog's typical latency for models not yet measured."""

    def __init__(self, typical_ms: dict[str, float], *, window_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.typical_ms = dict(typical_ms)
        self.window_s = window_s
        self.clock = clock
        self.models: dict[str, ModelLatency] = {}

    def record(self, model: str, ms: float) -> None:
        book = self.models.get(model)
        if book is None:
            book = self.models[model] = ModelLatency(self.window_s, self.clock)
        book.add(ms)

    def expected_ms(self, model: str) -> tuple[float, str]:
        """(latency to plan with, where it comes from): the measured p90, or the catalog's typical latency."""
        book = self.models.get(model)
        if book is not None:
            sketch = book.merged()
            if sketch.count >= MIN_SAMPLES:
                p90 = sketch.get_quantile_value(0.9)
                if p90 is not None:
                    return p90, f"measured p90 over {int(sketch.count)} calls"
        return self.typical_ms.get(model, 0.0), "catalog typical latency"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{model: {count, p50_ms, p90_ms, p99_ms, buckets}} for the worker's stats."""
        out = {}
        for model, book in self.models.items():
            buckets = book.buckets()
            if buckets:
                out[model] = {**summary(book.merged()), "buckets": {str(k): c for k, c in buckets.items()}}
        return out
