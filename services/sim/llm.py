"""The Azure LLM inference trace (second-level, bursty) through the live policy — pure.

A discrete-time model (one step = one autoscaler tick = 1 s) of one deployment in one or
more PoPs: requests arrive at their trace times with a GPU time that grows with their
tokens; a replica takes `capacity` requests at once and starts `cold_start_s` after it is
asked for. Each second the waiting requests are routed, first come first served, by the
router's own `choose()` (nearest PoP with a free slot); one that finds none waits (held,
as the router holds it). Every tick each PoP's policy is `autoscaler.decide.decide`
itself, fed the concurrency this model observes there — so the simulator measures the
code that runs live. Baselines are the same function with other settings (fixed
keep-alive, Knative KPA defaults, an HPA-like floor of one with a 300 s window), all
scaling on window averages only, as Knative does (`panic_on_waiting=False`).

Idle GPU-seconds: replica time (from the start request on) not serving any request — the
platform's cost, never billed. Used GPU-seconds: the requests' own GPU time.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edgeinfer.services.autoscaler.decide import (
    Inputs,
    Observation,
    PolicyState,
    ReplicaView,
    ScaleConfig,
    decide,
)
from edgeinfer.services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, learned_times
from edgeinfer.services.router.policy import NoRoute, choose, order_pops
from edgeinfer.services.router.policy import ReplicaView as RouterReplica
from edgeinfer.services.sim.trace import Geography


@dataclass(frozen=True)
class Request:
    at: float  # seconds from the trace's start
    gpu_s: float


def load_llm_trace(path: Path, prefill_s_per_token: float = 0.00005,
                   decode_s_per_token: float = 0.02) -> list[Request]:
    """GPU time = prefill (context tokens) + decode (generated tokens), a 7B-class model on
    one GPU; only the shape matters for the policy comparison."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            at = datetime.fromisoformat(row["TIMESTAMP"][:26])
            rows.append((at, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    start = rows[0][0]
    return [Request((at - start).total_seconds(),
                    ctx * prefill_s_per_token + gen * decode_s_per_token) for at, ctx, gen in rows]


@dataclass(frozen=True)
class LlmPolicy:
    name: str
    parameter: str
    scale: ScaleConfig
    min_replicas: int = 0
    learn_keepalive: bool = False
    keepalive: KeepAliveConfig = field(default_factory=KeepAliveConfig)


@dataclass(frozen=True)
class LlmResult:
    policy: str
    parameter: str
    requests: int
    waited: int  # requests that found no free slot (cold start or saturation)
    p99_wait_s: float
    idle_gpu_s: float
    used_gpu_s: float
    cold_starts: int  # replica starts


@dataclass
class _Replica:
    id: str
    pop: str
    ready_at: float
    busy_until: list[float] = field(default_factory=list)  # one end time per slot in use
    stopped: bool = False


@dataclass
class _Tally:
    waits: list[float] = field(default_factory=list)
    waited: int = 0
    starts: int = 0
    idle_s: float = 0.0
    used_s: float = 0.0

    def served(self, wait: float, gpu_s: float) -> None:
        self.waits.append(wait)
        self.waited += wait > 0
        self.used_s += gpu_s


@dataclass
class _Pop:
    """One PoP's autoscaler view: its replicas, observed load and learned history."""

    name: str
    keepalive: KeepAliveConfig
    replicas: list[_Replica] = field(default_factory=list)
    state: PolicyState = field(default_factory=PolicyState)
    observations: list[Observation] = field(default_factory=list)
    last_request_at: float | None = None
    demand_at: float | None = None
    histogram: IdleHistogram = field(init=False)

    def __post_init__(self) -> None:
        self.histogram = IdleHistogram.empty(self.keepalive)

    def arrival(self, at: float) -> None:
        elapsed_min = 0.0 if self.last_request_at is None else (at - self.last_request_at) / 60
        self.histogram = self.histogram.record(elapsed_min, 1)
        self.last_request_at = at

    def scale(self, now: float, waiting: int, policy: LlmPolicy, capacity: int,
              cold_start_s: float, new_id: Callable[[], str], tally: _Tally) -> None:
        """One autoscaler tick here: observe this PoP's load, `decide()`, apply; count the
        second's idle replica time."""
        if waiting:
            self.demand_at = now
        ready = [r for r in self.replicas if r.ready_at <= now]
        concurrency = sum(len(r.busy_until) for r in ready) + waiting
        self.observations.append(Observation(now, float(concurrency)))
        if len(self.observations) > 400:
            del self.observations[:100]
        prewarm_s, keepalive_s = (learned_times(self.histogram, policy.keepalive)
                                  if policy.learn_keepalive else (0.0, None))
        decision = decide(Inputs(
            now=now, capacity=capacity, min_replicas=policy.min_replicas, max_replicas=64,
            replicas=[ReplicaView(r.id, "ready" if r.ready_at <= now else "starting",
                                  len(r.busy_until)) for r in self.replicas],
            observations=self.observations, last_request_at=self.last_request_at,
            demand_at=self.demand_at, prewarm_s=prewarm_s, keepalive_s=keepalive_s),
            self.state, policy.scale)
        self.state = decision.state
        for _ in range(decision.start):
            self.replicas.append(_Replica(new_id(), self.name, now + cold_start_s))
            tally.starts += 1
        for rep in self.replicas:
            if rep.id in decision.stop:
                rep.stopped = True
            elif not (rep.busy_until and rep.ready_at <= now):
                tally.idle_s += 1.0  # alive this second with no request in any slot
        self.replicas = [r for r in self.replicas if not r.stopped]


def _route_waiting(queue: list[tuple[float, int, float]], views: dict[str, _Pop],
                   nearest: Callable[[int], list[tuple[str, float]]], capacity: int, now: float,
                   draw: Callable[[int], int], tally: _Tally) -> dict[str, int]:
    """Route the waiting requests, first come first served, with the router's `choose()`;
    the rest stay in `queue`. Returns how many still wait for each (nearest) PoP."""
    by_id = {rep.id: rep for v in views.values() for rep in v.replicas}
    waiting_for = dict.fromkeys(views, 0)
    still: list[tuple[float, int, float]] = []
    while queue:
        arrival, seq, gpu_s = heapq.heappop(queue)
        routed = choose(nearest(seq), {
            name: [RouterReplica(rep.id, name, "", rep.ready_at <= now, capacity,
                                 len(rep.busy_until)) for rep in v.replicas]
            for name, v in views.items()}, draw)
        if isinstance(routed, NoRoute):
            waiting_for[nearest(seq)[0][0]] += 1
            still.append((arrival, seq, gpu_s))
            continue
        target = by_id[routed.replica.runner_id]
        start = max(arrival, target.ready_at, now - 1.0)
        target.busy_until.append(start + gpu_s)
        tally.served(max(0.0, start - arrival), gpu_s)
    queue.extend(still)
    heapq.heapify(queue)
    return waiting_for


def simulate_llm(requests: Sequence[Request], policy: LlmPolicy, *, capacity: int = 4,
                 cold_start_s: float = 6.0, pops: Sequence[str] = ("pop0",),
                 client_mix: Sequence[float] | None = None, seed: int = 0) -> LlmResult:
    """One deployment served from `pops` (one client region beside each, `client_mix` of
    the requests from each; all PoPs allowed). Each second, waiting requests are routed by
    the router's own `choose()` (nearest allowed PoP with a free slot, power of two choices
    within it); one that finds no free slot anywhere waits, counted as load of its nearest
    PoP — as the router holds it there, or reports it refused — and every PoP's replicas
    follow `decide()` on that PoP's load."""
    rng = random.Random(seed)
    geography = Geography.spread(list(pops))
    mix = list(client_mix) if client_mix is not None else [1.0] * len(pops)
    clients = rng.choices(list(pops), weights=mix, k=len(requests))
    by_region = {c: order_pops(pops, geography.rtt_ms[c]) for c in pops}

    def nearest(seq: int) -> list[tuple[str, float]]:
        return by_region[clients[seq]]

    ids = itertools.count()

    def new_id() -> str:
        return f"r{next(ids)}"

    views = {name: _Pop(name, policy.keepalive) for name in pops}
    horizon = math.ceil(max(r.at for r in requests)) + 1
    queue: list[tuple[float, int, float]] = []  # (arrival, seq, gpu_s) waiting for a slot
    tally = _Tally()
    i = 0
    tick = -1
    # Until every request has arrived and been served: none is dropped at the trace's end.
    while tick <= horizon or queue or i < len(requests):
        tick += 1
        now = float(tick)
        while i < len(requests) and requests[i].at < now:  # this second's arrivals
            views[nearest(i)[0][0]].arrival(requests[i].at)
            heapq.heappush(queue, (requests[i].at, i, requests[i].gpu_s))
            i += 1
        for view in views.values():
            for rep in view.replicas:
                rep.busy_until = [t for t in rep.busy_until if t > now]
        waiting_for = _route_waiting(queue, views, nearest, capacity, now, rng.randrange, tally)
        for name, view in views.items():
            view.scale(now, waiting_for[name], policy, capacity, cold_start_s, new_id, tally)
    waits = sorted(tally.waits)
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))] if waits else 0.0
    return LlmResult(policy.name, policy.parameter, len(requests), tally.waited, p99,
                     tally.idle_s, tally.used_s, tally.starts)


def llm_policies() -> list[LlmPolicy]:
    # The baselines scale as Knative's KPA does: on window averages only (no panic on
    # requests waiting now, which is edgeinfer's own addition to decide()).
    fixed = [LlmPolicy("fixed keep-alive", f"{m} min",
                       ScaleConfig(fallback_keepalive_s=60.0 * m, panic_on_waiting=False))
             for m in (1, 5, 10, 20)]
    kpa = LlmPolicy("Knative KPA defaults", "60 s + 30 s grace",
                    ScaleConfig(fallback_keepalive_s=30.0, panic_on_waiting=False))
    hpa = LlmPolicy("Kubernetes HPA", "min 1, 300 s window",
                    ScaleConfig(stable_window_s=300.0, panic_window_s=300.0, panic_on_waiting=False),
                    min_replicas=1)
    ours = [LlmPolicy("edgeinfer decide()", f"learned, fallback {m} min",
                      ScaleConfig(fallback_keepalive_s=60.0 * m), learn_keepalive=True,
                      keepalive=KeepAliveConfig(fixed_keepalive_min=m, min_samples=4,
                                                margin=0.0))
            for m in (1, 5, 10)]
    ours += [LlmPolicy("edgeinfer decide()", f"learned, fallback 1 min, delay {d // 60} min",
                       ScaleConfig(fallback_keepalive_s=60.0, scale_down_delay_s=float(d)),
                       learn_keepalive=True,
                       keepalive=KeepAliveConfig(fixed_keepalive_min=1, min_samples=4, margin=0.0))
             for d in (120, 300)]
    return [*fixed, kpa, hpa, *ours]


def run_llm(trace: Path, pops: Sequence[str] = ("pop0",),
            client_mix: Sequence[float] | None = None) -> list[LlmResult]:
    requests = load_llm_trace(trace)
    return [simulate_llm(requests, p, pops=pops, client_mix=client_mix) for p in llm_policies()]

