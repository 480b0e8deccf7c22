"""Server-rendered SVG charts: pure functions from numbers to markup (no JS, nothing fetched).

Every mark carries its numbers as `data-*` attributes (and a `<title>` tooltip), so a test or a
curious user can read exactly what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from markupsafe import Markup, escape

OUTCOMES: tuple[str, ...] = ("allow", "review", "deny", "other")
COLORS = {"allow": "#2f9e62", "review": "#d99a1e", "deny": "#d64545", "other": "#8a8f98"}


@dataclass
class Bucket:
    start: float  # epoch seconds
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class TierLatency:
    tier: str
    target_ms: float
    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    met: int = 0  # evaluations at or under the target


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _clock(t: float, seconds: bool) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S" if seconds else "%H:%M")


def _nice_max(v: int) -> int:
    if v <= 4:
        return max(v, 1)
    mag = 10 ** int(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return int(step * mag)
    return v


def decisions_chart(buckets: Sequence[Bucket], bucket_s: float, width: int = 680, height: int = 220) -> Markup:
    """Stacked columns: decisions per time bucket, one colour per outcome."""
    left, right, top, bottom = 40, 10, 12, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max((b.total for b in buckets), default=0))
    n = max(len(buckets), 1)
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.78)
    out = [f'<svg class="chart" id="decisions-chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Decisions over time by outcome" data-bucket-seconds="{_num(bucket_s)}">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(peak * frac)}</text>')
    label_every = max(1, math.ceil(n / 6))
    seconds = bucket_s < 60
    for i, b in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for outcome in OUTCOMES:
            c = b.counts.get(outcome, 0)
            if not c:
                continue
            h = plot_h * c / peak
            y -= h
            when = _clock(b.start, seconds)
            out.append(
                f'<rect class="bar" data-outcome="{outcome}" data-count="{c}" data-start="{int(b.start)}" '
                f'x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{COLORS[outcome]}">'
                f'<title>{when}: {c} {outcome}</title></rect>')
        if i % label_every == 0:
            out.append(f'<text class="axis" x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                       f'{_clock(b.start, seconds)}</text>')
    out.append(f'<line class="axis-line" x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    out.append("</svg>")
    return Markup("".join(out))


# latency axis: log scale from 10 µs to 10 s covers a cached WASM path and a reasoning model call
_LAT_MIN_MS, _LAT_MAX_MS = 0.01, 10_000.0


def _lat_x(ms: float, left: float, plot_w: float) -> float:
    ms = min(max(ms, _LAT_MIN_MS), _LAT_MAX_MS)
    span = math.log10(_LAT_MAX_MS) - math.log10(_LAT_MIN_MS)
    return left + plot_w * (math.log10(ms) - math.log10(_LAT_MIN_MS)) / span


def _ms_label(ms: float) -> str:
    if ms < 1:
        return f"{_num(ms * 1000)} µs"
    if ms < 1000:
        return f"{_num(ms)} ms"
    return f"{_num(ms / 1000)} s"


def latency_chart(rows: Sequence[TierLatency], width: int = 680) -> Markup:
    """One row per tier on a log axis: a bar to p99, ticks at p50 and p90, the tier's target dashed."""
    left, right, top, row_h = 84, 16, 10, 34
    height = top + row_h * len(rows) + 30
    plot_w = width - left - right
    out = [f'<svg class="chart" id="latency-chart" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Latency percentiles per tier against each tier\'s target">']
    for ms in (0.01, 0.1, 1, 10, 100, 1000, 10_000):
        x = _lat_x(ms, left, plot_w)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row_h * len(rows)}"/>')
        out.append(f'<text class="axis" x="{x:.1f}" y="{height - 12}" text-anchor="middle">{_ms_label(ms)}</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h
        mid = y + row_h / 2
        out.append(f'<text class="label" x="{left - 8}" y="{mid + 4:.1f}" text-anchor="end">{escape(r.tier)}</text>')
        tx = _lat_x(r.target_ms, left, plot_w)
        if r.count and r.p50 is not None and r.p90 is not None and r.p99 is not None:
            x0 = _lat_x(_LAT_MIN_MS, left, plot_w)
            x50, x90, x99 = (_lat_x(v, left, plot_w) for v in (r.p50, r.p90, r.p99))
            ok = r.p99 <= r.target_ms
            color = "#2f9e62" if ok else ("#d99a1e" if r.p50 <= r.target_ms else "#d64545")
            out.append(
                f'<g class="tier-latency" data-tier="{escape(r.tier)}" data-count="{r.count}" data-p50="{r.p50:.4f}" '
                f'data-p90="{r.p90:.4f}" data-p99="{r.p99:.4f}" data-target="{_num(r.target_ms)}">'
                f'<title>{escape(r.tier)}: {r.count} evaluations; p50 {_ms_label(r.p50)}, p90 {_ms_label(r.p90)}, '
                f'p99 {_ms_label(r.p99)}; target {_ms_label(r.target_ms)} ({r.met}/{r.count} met)</title>'
                f'<rect x="{x0:.1f}" y="{mid - 7:.1f}" width="{max(1.0, x99 - x0):.1f}" height="14" rx="3" fill="{color}" opacity="0.28"/>'
                f'<rect x="{x0:.1f}" y="{mid - 7:.1f}" width="{max(1.0, x50 - x0):.1f}" height="14" rx="3" fill="{color}" opacity="0.75"/>'
                f'<line class="p90" x1="{x90:.1f}" x2="{x90:.1f}" y1="{mid - 9:.1f}" y2="{mid + 9:.1f}" stroke="{color}" stroke-width="2"/>'
                f'<line class="p99" x1="{x99:.1f}" x2="{x99:.1f}" y1="{mid - 9:.1f}" y2="{mid + 9:.1f}" stroke="{color}" stroke-width="3"/>'
                f'</g>')
        else:
            out.append(f'<text class="empty" x="{left + 8}" y="{mid + 4:.1f}">no evaluations at this tier yet</text>')
        out.append(f'<line class="target" data-tier="{escape(r.tier)}" x1="{tx:.1f}" x2="{tx:.1f}" y1="{y + 3}" y2="{y + row_h - 3}">'
                   f'<title>{escape(r.tier)} target {_ms_label(r.target_ms)}</title></line>')
    out.append("</svg>")
    return Markup("".join(out))


def ratio_bar(parts: Sequence[tuple[str, int, str]], width: int = 320, height: int = 22, chart_id: str = "") -> Markup:
    """A horizontal 100 % bar split into (label, count, colour) parts."""
    total = sum(c for _, c, _ in parts)
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    out = [f'<svg class="chart ratio"{ident} viewBox="0 0 {width} {height}" role="img" data-total="{total}">']
    if not total:
        out.append(f'<rect x="0" y="0" width="{width}" height="{height}" rx="4" fill="#e6e8eb"/>')
    x = 0.0
    for label, count, color in parts:
        if not count:
            continue
        w = width * count / total
        out.append(f'<rect class="part" data-part="{escape(label)}" data-count="{count}" x="{x:.1f}" y="0" '
                   f'width="{w:.1f}" height="{height}" fill="{color}"><title>{escape(label)}: {count}</title></rect>')
        x += w
    out.append("</svg>")
    return Markup("".join(out))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile: no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
