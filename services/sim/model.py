"""One deployment × PoP demand stream through one scaling policy, at minute granularity — pure.

Minute-slot model (as in Shahrad et al.'s simulation): an invocation in minute `m` finds
the replica warm if slot `m` is loaded under the window chosen after the previous
invocation, else it waits for a cold start (one cold start per cold minute: the replica
then serves the rest of that minute). A replica that is loaded but not busy is idle GPU
time: the platform's cost, never billed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edgeinfer.services.autoscaler.keepalive import NEVER, IdleHistogram, KeepAliveConfig, Window, window


class Policy(Protocol):
    name: str
    parameter: str

    def start(self) -> object: ...

    def window(self, state: object) -> Window: ...

    def observe(self, state: object, elapsed_min: int, requests: int) -> object: ...


@dataclass(frozen=True)
class FixedWindow:
    """A policy that learns nothing: the same window after every invocation."""

    name: str
    parameter: str
    keepalive_min: int

    def start(self) -> object:
        return None

    def window(self, state: object) -> Window:
        return Window(0, self.keepalive_min, self.name)

    def observe(self, state: object, elapsed_min: int, requests: int) -> object:
        return None


def fixed_keepalive(minutes: int) -> FixedWindow:
    return FixedWindow("fixed keep-alive", f"{minutes} min", minutes)


# KPA defaults: scale to zero 60 s (stable window) + 30 s (grace) after the last request;
# at minute granularity that keeps the next 2 slots (rounded in its favour).
KNATIVE_KPA = FixedWindow("Knative KPA defaults", "60 s + 30 s grace", 2)

# HPA cannot scale to zero: once up, a replica stays (its 300 s stabilisation is moot).
KUBERNETES_HPA = FixedWindow("Kubernetes HPA", "min 1", NEVER)


@dataclass(frozen=True)
class HybridHistogram:
    """A keep-alive learned from the stream's idle times (keepalive.py): edgeinfer's cost
    rule, or — with `cold_start_weight=None` — Shahrad et al.'s percentile rule."""

    config: KeepAliveConfig

    @property
    def name(self) -> str:
        if self.config.cold_start_weight is None:
            return "hybrid histogram (Shahrad)"
        return "edgeinfer learned keep-alive"

    @property
    def parameter(self) -> str:
        fallback = f"fallback {self.config.fixed_keepalive_min} min"
        if self.config.cold_start_weight is not None:
            return f"cold start = {self.config.cold_start_weight:g} gaps, {fallback}"
        return f"{fallback}, p{self.config.head_percentile:g}–p{self.config.tail_percentile:g}"

    def start(self) -> object:
        return IdleHistogram.empty(self.config)

    def window(self, state: object) -> Window:
        assert isinstance(state, IdleHistogram)
        return window(state, self.config)

    def observe(self, state: object, elapsed_min: int, requests: int) -> object:
        assert isinstance(state, IdleHistogram)
        return state.record(float(elapsed_min), requests)


@dataclass(frozen=True)
class StreamResult:
    invocations: int
    cold_starts: int
    loaded_slots: int
    busy_s: float
    idle_s: float

    @property
    def cold_start_rate(self) -> float:
        return self.cold_starts / self.invocations if self.invocations else 0.0


def loaded_between(prev: int, nxt: int, w: Window) -> int:
    """Loaded slots strictly between invocation minutes `prev` and `nxt` under window `w`."""
    first = prev + (w.prewarm_min if w.prewarm_min > 0 else 1)
    last = prev + w.prewarm_min + w.keepalive_min - (1 if w.prewarm_min > 0 else 0)
    return max(0, min(last, nxt - 1) - max(first, prev + 1) + 1)


def is_warm(prev: int, nxt: int, w: Window) -> bool:
    if w.prewarm_min > 0:
        return prev + w.prewarm_min <= nxt <= prev + w.prewarm_min + w.keepalive_min - 1
    return nxt <= prev + w.keepalive_min


def simulate(events: Sequence[tuple[int, int]], policy: Policy, horizon_min: int,
             duration_s: float, measured_from: int = 0) -> StreamResult:
    """`events`: (minute, invocations) with invocations > 0, minutes ascending. Only
    minutes from `measured_from` on are counted; the policy learns from all of them."""
    return simulate_views(events, policy, horizon_min, duration_s, (measured_from,))[0]


@dataclass
class _Tally:
    since: int
    invocations: int = 0
    cold: int = 0
    loaded: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0

    def invocation(self, minute: int, count: int, cold: bool, duration_s: float) -> None:
        if minute >= self.since:
            slot_busy = count * duration_s
            self.invocations += count
            self.cold += cold
            self.busy_s += slot_busy
            self.loaded += 1
            self.idle_s += max(0.0, 60.0 - slot_busy)

    def kept(self, prev: int, nxt: int, w: Window) -> None:
        """Loaded, idle slots strictly between `prev` and `nxt`, those before `since` left out."""
        slots = loaded_between(prev, nxt, w)
        if prev + 1 < self.since:
            slots -= loaded_between(prev, min(nxt, self.since), w)
        self.loaded += slots
        self.idle_s += 60.0 * slots

    def result(self) -> StreamResult:
        return StreamResult(self.invocations, self.cold, self.loaded, self.busy_s, self.idle_s)


def simulate_views(events: Sequence[tuple[int, int]], policy: Policy, horizon_min: int,
                   duration_s: float, measured_from: Sequence[int]) -> tuple[StreamResult, ...]:
    """One replay, counted from each of `measured_from` (e.g. the whole day, and the
    second half after 12 hours of history)."""
    tallies = [_Tally(since) for since in measured_from]
    state = policy.start()
    prev: int | None = None
    for minute, count in events:
        if prev is None:
            cold = True
            state = policy.observe(state, 0, count)
        else:
            w = policy.window(state)
            for tally in tallies:
                tally.kept(prev, minute, w)
            cold = not is_warm(prev, minute, w)
            state = policy.observe(state, minute - prev, count)
        for tally in tallies:
            tally.invocation(minute, count, cold, duration_s)
        prev = minute
    if prev is not None:  # after the last invocation, until the end of the trace
        w = policy.window(state)
        for tally in tallies:
            tally.kept(prev, horizon_min, w)
    return tuple(t.result() for t in tallies)
