"""How long to keep an idle deployment warm, learned from its own idle times — pure.

In the spirit of the hybrid histogram policy of "Serverless in the Wild" (Shahrad et al.,
ATC 2020): keep a histogram of the idle times between a deployment's invocations (1-minute
bins, up to 4 hours). While history is thin, or mostly beyond the histogram's range, fall
back to a fixed keep-alive. Once it can be trusted, the window after each invocation —
unloaded for a pre-warm time, then loaded until the keep-alive ends — comes from one of two
rules:

- **Cost** (the default, `cold_start_weight` set): the window that minimises, over the
  deployment's own history, idle minutes + weight × cold starts, where one cold start
  weighs `cold_start_weight` mean inter-request times. A deployment called once an hour
  then keeps a replica much longer than one called every few seconds, for the same share
  of its requests that meet a cold start — the cold-start *rate* a tenant sees is what is
  traded against the platform's idle time, not the count. Every pre-warm start and
  keep-alive end is a candidate; the search is exact and linear in the bins.
- **Percentiles** (Shahrad et al.'s, `cold_start_weight=None`): pre-warm at the head
  (5th percentile) less a margin, keep until the tail (99th) plus a margin.

Worked example (percentiles), idle times 30, 30, 31, 29, 30 … minutes (a half-hourly job),
margin 10%: pre-warm = floor(29 × 0.9) = 26 min, keep-alive ends at ceil(31 × 1.1) + 1 =
36 min — loaded 10 of every 30 minutes instead of 30 with a fixed 30-minute keep-alive.

Worked example (cost), idle times 1 (×6) and 20 (×2) minutes with 40 requests over 46
minutes, weight 8: a cold start weighs 8 × 46 / 40 = 9.2 idle minutes. Keeping 1 minute
costs 2 × 1 idle + 2 × 9.2 = 20.4; keeping 20 minutes costs 2 × 19 idle = 38, so the
window is one minute — but with weight 20 (23 idle minutes per cold start) it is 20.
(tests/unit/test_keepalive.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NEVER = 10**9  # minutes: a keep-alive longer than any history


@dataclass(frozen=True)
class KeepAliveConfig:
    fixed_keepalive_min: int = 10  # while history is thin
    bins: int = 240  # 1-minute bins: 4 hours
    min_samples: int = 2
    head_percentile: float = 5.0
    tail_percentile: float = 99.0
    margin: float = 0.10  # the percentile rule's; the cost rule fits its window exactly
    # Beyond this share of idle times longer than the histogram, its shape means little.
    max_out_of_bounds: float = 0.5
    # One cold start weighs this many mean inter-request times of idle replica time;
    # None: Shahrad et al.'s percentile rule instead of the cost rule.
    cold_start_weight: float | None = 8.0
    # The cost rule's prior: this many pseudo idle times, spread log-uniformly over a day,
    # added to the deployment's own (see `prior_idle_times`).
    prior_idle_times: float = 1.0


PRIOR_SPAN_MIN = 1440  # the prior's idle times reach up to a day


@dataclass(frozen=True)
class IdleHistogram:
    counts: tuple[int, ...]
    out_of_bounds: int = 0
    requests: int = 0  # requests seen over the history
    span_min: float = 0.0  # minutes the history covers (first request to last)
    out_of_bounds_min: float = 0.0  # the idle minutes of the out-of-range idle times

    @classmethod
    def empty(cls, config: KeepAliveConfig) -> IdleHistogram:
        return cls((0,) * config.bins)

    def record(self, elapsed_min: float, requests: int) -> IdleHistogram:
        """`requests` arrived `elapsed_min` after the previous ones; a gap of a minute or
        more is an idle time."""
        counts, out_of_bounds, out_of_bounds_min = self.counts, self.out_of_bounds, self.out_of_bounds_min
        if elapsed_min >= 1:
            idle_min = int(elapsed_min)
            if idle_min >= len(counts):
                out_of_bounds += 1
                out_of_bounds_min += idle_min
            else:
                mutable = list(counts)
                mutable[idle_min] += 1
                counts = tuple(mutable)
        return IdleHistogram(counts, out_of_bounds, self.requests + requests,
                             self.span_min + max(0.0, elapsed_min), out_of_bounds_min)

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


def trusted(histogram: IdleHistogram, config: KeepAliveConfig) -> bool:
    """Enough idle times, mostly within the histogram's range, to learn a window from."""
    samples = histogram.samples
    seen = samples + histogram.out_of_bounds
    return samples >= config.min_samples and not (
        seen and histogram.out_of_bounds / seen > config.max_out_of_bounds)


def window(histogram: IdleHistogram, config: KeepAliveConfig) -> Window:
    if not trusted(histogram, config):
        return Window(0, config.fixed_keepalive_min, "fixed: thin or out-of-range history")
    if config.cold_start_weight is not None:
        return cheapest_window(histogram, config.cold_start_weight, config.prior_idle_times)
    head = percentile_bin(histogram.counts, config.head_percentile)
    tail = percentile_bin(histogram.counts, config.tail_percentile)
    prewarm = math.floor(head * (1.0 - config.margin))
    end = math.ceil(tail * (1.0 + config.margin)) + 1
    return Window(prewarm, max(1, end - prewarm), "histogram")


def cheapest_window(histogram: IdleHistogram, weight: float, prior: float = 0.0) -> Window:
    """The window with the least idle minutes + cold-start cost over this history, among
    every pre-warm start and keep-alive end the histogram's range allows.

    A window loads minutes [first, end] after an invocation (first > 1: unloaded until
    then, a pre-warm); an idle time of g minutes is warm when first ≤ g ≤ end, and keeps
    the replica loaded, idle, for the minutes in [first, min(end, g - 1)]. With S(m) the
    number of idle times longer than m and C(m) the number of exactly m minutes,

        cost(first, end) = Σ_{m=first..end} S(m) + c × (total − Σ_{m=first..end} C(m))
                         = A(end) − A(first − 1) + c × total,  A(k) = Σ_{m≤k} S(m) − c × C(m)

    so for each end the best start is where A peaks before it: one running maximum finds
    the best of all O(bins²) windows in O(bins). (An hourly job with one stray 1-minute
    gap is then pre-warmed at minute 60 instead of kept, or left cold, for the hour.) One
    more candidate never unloads (no cold start, every idle minute paid), as a floor of
    one replica would. `prior` pseudo idle times (`prior_idle_times`) join the history's.
    """
    prior_counts, prior_beyond, prior_beyond_min = prior_idle_times(len(histogram.counts), prior)
    counts = np.asarray(histogram.counts, dtype=np.float64) + prior_counts
    out_of_bounds = histogram.out_of_bounds + prior_beyond
    out_of_bounds_min = histogram.out_of_bounds_min + prior_beyond_min
    # Cold start weight in idle minutes: `weight` mean inter-request times.
    cold_cost = weight * histogram.span_min / max(histogram.requests, 1)
    # S(m): idle times longer than m minutes, out-of-range ones included.
    longer = np.cumsum(counts[::-1])[::-1] - counts + out_of_bounds
    total = counts.sum() + out_of_bounds
    # a[k] = A(k) for k = 0 … bins-1; minute 0 is no idle time, so A(0) = 0.
    a = np.concatenate(([0.0], np.cumsum(longer[1:] - cold_cost * counts[1:])))
    best_before = np.maximum.accumulate(a)[:-1]  # max A(0 … end-1), for end = 1 … bins-1
    costs = a[1:] - best_before + cold_cost * total
    end = int(np.argmin(costs)) + 1  # the first of equal costs: the shorter window
    first = int(np.argmax(a[:end])) + 1  # the first of equal peaks: the earlier start
    never_unload = float(counts @ (np.arange(len(counts)) - 1.0)) + out_of_bounds_min - out_of_bounds
    if never_unload < float(costs[end - 1]):
        return Window(0, NEVER, "histogram: never unload (cheaper than its cold starts)")
    prewarm = first if first > 1 else 0
    return Window(prewarm, end - first + 1, "histogram: least idle + cold-start cost")


@lru_cache(maxsize=16)  # a handful of (bins, total) pairs; read-only arrays
def prior_idle_times(bins: int, total: float) -> tuple[np.ndarray, float, float]:
    """`total` pseudo idle times spread over 1 … PRIOR_SPAN_MIN minutes with density ∝ 1/m
    (log-uniform: as likely 1–2 minutes as 1–2 hours), as (per-bin counts, count beyond the
    histogram, their idle minutes).

    Why: a handful of idle times says nothing about the gaps it has not seen yet, and the
    exact window search would fit a pre-warm window to those few — then a burst's first
    1-minute gap, or the deployment's first 6-hour one, meets a cold start. Scale-free
    pseudo-counts keep some weight on every idle time until the deployment's own history
    outweighs them; with one pseudo idle time that is after a few dozen gaps.
    """
    minutes = np.arange(1, PRIOR_SPAN_MIN + 1, dtype=np.float64)
    mass = total / minutes / np.sum(1.0 / minutes)
    in_range = np.zeros(bins)
    inside = min(bins - 1, PRIOR_SPAN_MIN)
    in_range[1:inside + 1] = mass[:inside]
    beyond = mass[inside:]
    in_range.setflags(write=False)
    return in_range, float(beyond.sum()), float(beyond @ minutes[inside:])


def learned_times(histogram: IdleHistogram | None, config: KeepAliveConfig) -> tuple[float, float | None]:
    """(pre-warm seconds, keep-alive seconds) for the live policy: (0, None) — use the fixed
    fallback — until the histogram can be trusted."""
    if histogram is None or not trusted(histogram, config):
        return 0.0, None
    w = window(histogram, config)
    return w.prewarm_min * 60.0, w.keepalive_min * 60.0
