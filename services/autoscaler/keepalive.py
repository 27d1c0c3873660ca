"""How long to keep an idle deployment warm, learned from its own idle times — pure.

In the spirit of the hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
ATC 2020): keep a histogram of the idle times between a deployment's invocations (1-minute
bins, up to 4 hours). When it holds enough samples, the head of the distribution says how
long after an invocation the next one is very unlikely (pre-warm: release at once, load
again just before), the tail says when it has become unlikely (keep-alive ends). While
history is thin, or mostly beyond the histogram's range, fall back to a fixed keep-alive.

Worked example, idle times 30, 30, 31, 29, 30 … minutes (a half-hourly job), head 5th and
tail 99th percentile, margin 10%: pre-warm = floor(29 × 0.9) = 26 min, keep-alive ends
at ceil(31 × 1.1) + 1 = 36 min — the replica is loaded 10 of every 30 minutes instead of
30 with a fixed 30-minute keep-alive. (tests/unit/test_keepalive.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class KeepAliveConfig:
    fixed_keepalive_min: int = 10  # while history is thin
    bins: int = 240  # 1-minute bins: 4 hours
    min_samples: int = 8
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    margin: float = 0.10
    # Beyond this share of idle times longer than the histogram, its shape means little.
    max_out_of_bounds: float = 0.5


@dataclass(frozen=True)
class IdleHistogram:
    counts: tuple[int, ...]
    out_of_bounds: int = 0

    @classmethod
    def empty(cls, config: KeepAliveConfig) -> IdleHistogram:
        return cls((0,) * config.bins)

    def observe(self, idle_min: int) -> IdleHistogram:
        if idle_min >= len(self.counts):
            return IdleHistogram(self.counts, self.out_of_bounds + 1)
        counts = list(self.counts)
        counts[max(0, idle_min)] += 1
        return IdleHistogram(tuple(counts), self.out_of_bounds)

    @property
    def samples(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Window:
    """After an invocation: unloaded for `prewarm_min`, then loaded for `keepalive_min`."""

    prewarm_min: int
    keepalive_min: int
    reason: str = ""


def percentile_bin(counts: tuple[int, ...], percentile: float) -> int:
    total = sum(counts)
    threshold = total * percentile / 100.0
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= threshold and running > 0:
            return index
    return len(counts) - 1


def window(histogram: IdleHistogram, config: KeepAliveConfig) -> Window:
    samples = histogram.samples
    seen = samples + histogram.out_of_bounds
    if samples < config.min_samples or (
            seen and histogram.out_of_bounds / seen > config.max_out_of_bounds):
        return Window(0, config.fixed_keepalive_min, "fixed: thin or out-of-range history")
    head = percentile_bin(histogram.counts, config.head_percentile)
    tail = percentile_bin(histogram.counts, config.tail_percentile)
    prewarm = math.floor(head * (1.0 - config.margin))
    end = math.ceil(tail * (1.0 + config.margin)) + 1
    return Window(prewarm, max(1, end - prewarm), "histogram")


def learned_times(histogram: IdleHistogram | None, config: KeepAliveConfig) -> tuple[float, float | None]:
    """(pre-warm seconds, keep-alive seconds) for the live policy: (0, None) — use the fixed
    fallback — until the histogram can be trusted."""
    if histogram is None:
        return 0.0, None
    w = window(histogram, config)
    if w.reason != "histogram":
        return 0.0, None
    return w.prewarm_min * 60.0, w.keepalive_min * 60.0
