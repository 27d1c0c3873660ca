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

from services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, Window, window

ALWAYS = 10**9  # a keep-alive longer than any trace


class Policy(Protocol):
    name: str
    parameter: str

    def start(self) -> object: ...

    def window(self, state: object) -> Window: ...

    def observe(self, state: object, idle_min: int) -> object: ...


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

    def observe(self, state: object, idle_min: int) -> object:
        return None


def fixed_keepalive(minutes: int) -> FixedWindow:
    return FixedWindow("fixed keep-alive", f"{minutes} min", minutes)


# KPA defaults: scale to zero 60 s (stable window) + 30 s (grace) after the last request;
# at minute granularity that keeps the next 2 slots (rounded in its favour).
KNATIVE_KPA = FixedWindow("Knative KPA defaults", "60 s + 30 s grace", 2)

# HPA cannot scale to zero: once up, a replica stays (its 300 s stabilisation is moot).
KUBERNETES_HPA = FixedWindow("Kubernetes HPA", "min 1", ALWAYS)


@dataclass(frozen=True)
class HybridHistogram:
    config: KeepAliveConfig
    name: str = "edgeinfer hybrid histogram"

    @property
    def parameter(self) -> str:
        tail = "" if self.config.tail_percentile == 99.0 else f", tail p{self.config.tail_percentile:g}"
        margin = f", margin {self.config.margin:g}" if self.config.margin else ""
        return f"fallback {self.config.fixed_keepalive_min} min{tail}{margin}"

    def start(self) -> object:
        return IdleHistogram.empty(self.config)

    def window(self, state: object) -> Window:
        assert isinstance(state, IdleHistogram)
        return window(state, self.config)

    def observe(self, state: object, idle_min: int) -> object:
        assert isinstance(state, IdleHistogram)
        return state.observe(idle_min)


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
             duration_s: float) -> StreamResult:
    """`events`: (minute, invocations) with invocations > 0, minutes ascending."""
    state = policy.start()
    invocations = cold = loaded = 0
    busy = idle = 0.0
    prev: int | None = None
    for minute, count in events:
        slot_busy = count * duration_s
        busy += slot_busy
        invocations += count
        if prev is None:
            cold += 1
        else:
            w = policy.window(state)
            between = loaded_between(prev, minute, w)
            loaded += between
            idle += 60.0 * between
            if not is_warm(prev, minute, w):
                cold += 1
            state = policy.observe(state, minute - prev)
        loaded += 1
        idle += max(0.0, 60.0 - slot_busy)
        prev = minute
    if prev is not None:  # after the last invocation, until the end of the trace
        tail = loaded_between(prev, horizon_min, policy.window(state))
        loaded += tail
        idle += 60.0 * tail
    return StreamResult(invocations, cold, loaded, busy, idle)
