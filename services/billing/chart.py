"""The portal's chart of daily GPU-seconds, stacked by deployment × PoP, as SVG geometry.

Pure: rows in, rectangles out; the template draws them. Server-side SVG needs no script
and renders the same in any browser (and in the end-to-end test's headless Chromium).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

PALETTE = ("#2563eb", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    color: str
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    legend: list[tuple[str, str]]  # (series, color)
    max_seconds: Decimal
    days: list[date]


def daily_chart(rows: list[tuple[date, str, Decimal]], days: list[date], width: int = 720,
                height: int = 200) -> Chart:
    """rows: (day, series, GPU-seconds); one stacked bar per day of `days`."""
    series = sorted({s for _, s, _ in rows})
    colors = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(series)}
    per_day: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for day, s, seconds in rows:
        per_day[day][s] += seconds
    top = max((sum(v.values(), Decimal(0)) for v in per_day.values()), default=Decimal(0))
    slot = width / max(1, len(days))
    bars = []
    for i, day in enumerate(days):
        base = float(height)
        for s in series:
            seconds = per_day.get(day, {}).get(s, Decimal(0))
            if not seconds:
                continue
            h = float(seconds / top) * height if top else 0.0
            base -= h
            bars.append(Bar(round(i * slot + slot * 0.1, 2), round(base, 2), round(slot * 0.8, 2),
                            round(h, 2), colors[s], f"{day.isoformat()} · {s}: {seconds:f} GPU-s"))
    return Chart(width, height, bars, [(s, colors[s]) for s in series], top, days)
