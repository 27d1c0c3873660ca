"""How many replicas one (deployment, PoP) should run now: a pure function, time passed in.

Load-driven in the manner of Knative's KPA:
- Concurrency (requests in flight at the runners plus requests the router holds) is
  averaged over a stable window (60 s) and a panic window (6 s); a replica should carry
  `capacity × target_utilisation` of it, so desired = ceil(average / that).
- Panic: when the panic window asks for `panic_threshold`× the ready replicas, the
  decision follows the panic window and does not go down until a whole stable window has
  passed without panic — a burst is met in seconds, a dip does not undo it.
- Startup-aware: a starting replica is not capacity (a burst against ready replicas still
  panics) but it is on its way (no second start for the same load), and it is never
  stopped for idleness. Scale-down stops only idle ready replicas, which then drain.
- Scale to zero: with no load, one replica stays until the keep-alive after the last
  request has passed — learned per deployment (keepalive.py) or the fixed fallback — and
  the router's demand signal wakes a deployment at once. A learned window may also start
  later (pre-warm): unload right after the load ends, start a replica `prewarm_lead_s`
  before the next request is expected, keep it for the keep-alive.
- Floors and ceiling: `min_replicas`, the tenant's active schedules, `max_replicas`.
- Blind: while the load metrics cannot be read, hold — never scale down on no data,
  keep the state as it was, and only a router's demand signal may still wake a PoP with
  nothing running (Knative's `ScaleValid`: no decision is better than a wrong one).
- Waiting requests panic at once: when the load right now exceeds what the ready
  replicas take (requests held or refused), the panic window counts that load, not only
  its 6-s average (Knative's KPA waits for the average; `panic_on_waiting=False`).

Worked example (capacity 8, utilisation 0.7 → 5.6 per replica): 2 ready, stable average
4 → 1; panic average 20 → ceil(20 / 5.6) = 4 ≥ 2 × 2 ready → panic, desired 4, start 2.
One ready replica, a burst of 20 this second after a quiet 5 s: the 6-s average is 3.3
(desired 1, no panic), but 20 > 8 are in flight or waiting → ceil(20 / 5.6) = 4, start 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    runner_id: str
    state: str  # starting | ready | draining
    in_flight: int = 0


@dataclass(frozen=True)
class Observation:
    at: float
    concurrency: float


@dataclass(frozen=True)
class ScaleConfig:
    target_utilisation: float = 0.7
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    fallback_keepalive_s: float = 600.0
    prewarm_lead_s: float = 10.0  # start a pre-warmed replica this long before it is due
    # Knative's scale-down-delay: never go below the most asked for in this window (0: off).
    # Spares a bursty deployment the stop/start churn between bursts.
    scale_down_delay_s: float = 0.0
    # Requests waiting now (more load than the ready replicas take) panic on that load at
    # once, instead of after the panic window's average has caught up with the burst.
    panic_on_waiting: bool = True


@dataclass(frozen=True)
class Inputs:
    now: float
    capacity: int  # requests one replica takes at once
    min_replicas: int
    max_replicas: int
    replicas: Sequence[ReplicaView] = ()
    observations: Sequence[Observation] = ()
    last_request_at: float | None = None
    demand_at: float | None = None
    schedule_min: int = 0
    keepalive_s: float | None = None  # learned; None while history is thin
    # Learned too: no replica needed for this long after the last request (the head of
    # the idle-time histogram); then one is kept for `keepalive_s`. 0: keep from the start.
    prewarm_s: float = 0.0
    metrics_ok: bool = True  # False: the load could not be read, `observations` are stale


@dataclass(frozen=True)
class PolicyState:
    panic_until: float | None = None
    panic_desired: int = 0  # the most asked for during the current panic
    recent: tuple[tuple[float, int], ...] = ()  # (time, desired) within the scale-down delay


@dataclass(frozen=True)
class Decision:
    desired: int
    start: int
    stop: tuple[str, ...]
    reason: str
    state: PolicyState
    stable_concurrency: float = 0.0
    panic_concurrency: float = 0.0
    holds: tuple[str, ...] = ()  # why some excess could not be stopped yet


def average(observations: Sequence[Observation], now: float, window_s: float) -> float:
    values = [o.concurrency for o in observations if now - window_s < o.at <= now]
    return sum(values) / len(values) if values else 0.0


def replica_changes(target: int, replicas: Sequence[ReplicaView]) -> tuple[int, tuple[str, ...]]:
    """How to get from `replicas` to `target` live ones: how many to start, and which to
    stop — only idle ready replicas (they drain), the highest runner ids first, so repeated
    decisions pick the same ones. Busy and starting replicas are never stopped."""
    live = sum(r.state != "draining" for r in replicas)
    excess = live - target
    if excess <= 0:
        return target - live, ()
    idle = sorted((r for r in replicas if r.state == "ready" and r.in_flight == 0),
                  key=lambda r: r.runner_id, reverse=True)
    return 0, tuple(r.runner_id for r in idle[:excess])


def hold(inputs: Inputs, state: PolicyState, config: ScaleConfig) -> Decision:
    """The decision while the load cannot be read: what runs now, and one replica if a
    router is holding requests for a PoP that has none."""
    live = sum(r.state != "draining" for r in inputs.replicas)
    woken = inputs.demand_at is not None and inputs.now - inputs.demand_at < config.stable_window_s
    desired = max(live, 1 if woken else 0)
    return Decision(desired, desired - live, (), "load metrics unavailable: holding", state)


def decide(inputs: Inputs, state: PolicyState, config: ScaleConfig) -> Decision:
    if not inputs.metrics_ok:
        return hold(inputs, state, config)
    now = inputs.now
    recent_desired = state.recent
    per_replica = max(inputs.capacity * config.target_utilisation, 1e-9)
    stable = average(inputs.observations, now, config.stable_window_s)
    panic = average(inputs.observations, now, config.panic_window_s)
    ready = sum(r.state == "ready" for r in inputs.replicas)
    starting = sum(r.state == "starting" for r in inputs.replicas)
    latest = inputs.observations[-1] if inputs.observations else None
    if (config.panic_on_waiting and latest is not None and latest.at == now
            and latest.concurrency > ready * inputs.capacity):
        # Some of it is waiting (held by the router, or refused at capacity): a 6-s average
        # over a burst that began a second ago would take seconds to ask for what is
        # plainly missing now, while every second of it is a wait for a tenant.
        panic = max(panic, latest.concurrency)
    want_stable = math.ceil(stable / per_replica - 1e-9)
    want_panic = math.ceil(panic / per_replica - 1e-9)

    panicking = state.panic_until is not None and now < state.panic_until
    if want_panic > ready and want_panic >= config.panic_threshold * max(ready, 1):
        state = PolicyState(now + config.stable_window_s, max(state.panic_desired, want_panic))
        panicking = True
    if panicking:
        desired = max(want_panic, want_stable, state.panic_desired)
        state = PolicyState(state.panic_until, desired)
        reason = (f"panic: {panic:.1f} in flight over {config.panic_window_s:g} s vs "
                  f"{ready} ready replica(s)")
    else:
        state = PolicyState()
        desired = want_stable
        reason = f"stable: {stable:.1f} in flight over {config.stable_window_s:g} s"

    if desired == 0:
        keepalive = inputs.keepalive_s if inputs.keepalive_s is not None else config.fallback_keepalive_s
        demand = inputs.demand_at is not None and now - inputs.demand_at < config.stable_window_s
        idle_for = None if inputs.last_request_at is None else now - inputs.last_request_at
        prewarm = inputs.prewarm_s if inputs.keepalive_s is not None else 0.0
        if demand:
            desired, reason = 1, "woken by the router's demand signal"
        elif idle_for is not None and prewarm > 0 and idle_for < prewarm - config.prewarm_lead_s:
            reason = (f"unloaded until the expected next request (pre-warm at {prewarm:.0f} s,"
                      f" idle {idle_for:.0f} s)")
        elif idle_for is not None and idle_for < prewarm + keepalive:
            learned = "learned" if inputs.keepalive_s is not None else "fallback"
            what = "pre-warmed" if prewarm > 0 else "keep-alive"
            desired, reason = 1, f"{what} ({learned} {keepalive:.0f} s, idle {idle_for:.0f} s)"
        else:
            reason = "no load and past the keep-alive: scale to zero"
    floor = max(inputs.min_replicas, inputs.schedule_min)
    if desired < floor:
        desired = floor
        reason = ("schedule keeps " if inputs.schedule_min >= inputs.min_replicas else
                  "min_replicas keeps ") + f"{floor} warm"
    if desired > inputs.max_replicas:
        desired = inputs.max_replicas
        reason += f" (capped at max_replicas {inputs.max_replicas})"
    if config.scale_down_delay_s > 0:
        # Remember what the load asked for (not the held value, or a hold would renew itself).
        recent = (*(r for r in recent_desired if now - r[0] < config.scale_down_delay_s),
                  (now, desired))
        held = max(n for _, n in recent)
        if held > desired:
            reason += f"; held at {held} for the {config.scale_down_delay_s:g} s scale-down delay"
            desired = held
        state = PolicyState(state.panic_until, state.panic_desired, recent)

    start, stop = replica_changes(desired, inputs.replicas)
    excess = ready + starting - desired
    holds = ((f"{excess - len(stop)} more to stop once idle (busy or starting)",)
             if excess > len(stop) else ())
    return Decision(desired, start, stop, reason, state, stable, panic, holds)
