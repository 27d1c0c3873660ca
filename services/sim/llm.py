"""The Azure LLM inference trace (second-level, bursty) through the live policy — pure.

A discrete-time model (one step = one autoscaler tick = 1 s) of one deployment in one PoP:
requests arrive at their trace times with a GPU time that grows with their tokens; a
replica takes `capacity` requests at once; a replica starts `cold_start_s` after it is
asked for; requests that find no free slot wait (held, as the router holds them) and are
served first-come first-served. Every tick the policy is `autoscaler.decide.decide` itself,
fed the concurrency this model observes — so the simulator measures the code that runs
live. Baselines are the same function with other settings (fixed keep-alive, Knative KPA
defaults, an HPA-like floor of one with a 300 s window), all scaling on window averages
only, as Knative does (`panic_on_waiting=False`).

Idle GPU-seconds: replica time (from the start request on) not serving any request — the
platform's cost, never billed. Used GPU-seconds: the requests' own GPU time.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.autoscaler.decide import Inputs, Observation, PolicyState, ReplicaView, ScaleConfig, decide
from services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, learned_times


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
    ready_at: float
    busy_until: list[float] = field(default_factory=list)  # one end time per slot in use
    stopped: bool = False


def simulate_llm(requests: Sequence[Request], policy: LlmPolicy, *, capacity: int = 4,
                 cold_start_s: float = 6.0) -> LlmResult:
    horizon = math.ceil(max(r.at for r in requests)) + 1
    queue: list[tuple[float, int, float]] = []  # (arrival, seq, gpu_s) waiting for a slot
    replicas: list[_Replica] = []
    alive_since: dict[str, float] = {}
    state = PolicyState()
    observations: list[Observation] = []
    waits: list[float] = []
    waited = starts = 0
    idle_s = used_s = 0.0
    last_request_at: float | None = None
    demand_at: float | None = None
    histogram = IdleHistogram.empty(policy.keepalive)
    i = 0
    next_id = 0
    tick = -1
    # Until every request has arrived and been served: none is dropped at the trace's end.
    while tick <= horizon or queue or i < len(requests):
        tick += 1
        now = float(tick)
        # Arrivals of this second join the queue; free slots take them in order.
        while i < len(requests) and requests[i].at < now:
            r = requests[i]
            elapsed_min = 0.0 if last_request_at is None else (r.at - last_request_at) / 60
            histogram = histogram.record(elapsed_min, 1)
            last_request_at = r.at
            heapq.heappush(queue, (r.at, i, r.gpu_s))
            i += 1
        for rep in replicas:
            rep.busy_until = [t for t in rep.busy_until if t > now]
        ready = [r for r in replicas if not r.stopped and r.ready_at <= now]
        while queue:
            free = [r for r in ready if len(r.busy_until) < capacity]
            if not free:
                break
            arrival, _, gpu_s = heapq.heappop(queue)
            target = min(free, key=lambda r: len(r.busy_until))
            start = max(arrival, target.ready_at, now - 1.0)
            wait = max(0.0, start - arrival)
            if wait > 0:
                waited += 1
            waits.append(wait)
            target.busy_until.append(start + gpu_s)
            used_s += gpu_s
        if queue:
            demand_at = now
        concurrency = sum(len(r.busy_until) for r in ready) + len(queue)
        observations.append(Observation(now, float(concurrency)))
        if len(observations) > 400:
            del observations[:100]
        prewarm_s, keepalive_s = (learned_times(histogram, policy.keepalive)
                                   if policy.learn_keepalive else (0.0, None))
        views = [ReplicaView(r.id, "ready" if r.ready_at <= now else "starting", len(r.busy_until))
                 for r in replicas if not r.stopped]
        decision = decide(Inputs(
            now=now, capacity=capacity, min_replicas=policy.min_replicas, max_replicas=64,
            replicas=views, observations=observations, last_request_at=last_request_at,
            demand_at=demand_at,
            prewarm_s=prewarm_s, keepalive_s=keepalive_s), state, policy.scale)
        state = decision.state
        for _ in range(decision.start):
            rep = _Replica(f"r{next_id}", now + cold_start_s)
            next_id += 1
            replicas.append(rep)
            alive_since[rep.id] = now
            starts += 1
        for rep in replicas:
            if rep.id in decision.stop:
                rep.stopped = True
        # Idle accounting for this second: alive replicas without a request in any slot.
        for rep in replicas:
            if not rep.stopped:
                busy = bool(rep.busy_until) and rep.ready_at <= now
                idle_s += 0.0 if busy else 1.0
        replicas = [r for r in replicas if not r.stopped]
    waits.sort()
    p99 = waits[min(len(waits) - 1, int(0.99 * len(waits)))] if waits else 0.0
    return LlmResult(policy.name, policy.parameter, len(requests), waited, p99, idle_s, used_s,
                     starts)


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


def run_llm(trace: Path) -> list[LlmResult]:
    requests = load_llm_trace(trace)
    return [simulate_llm(requests, p) for p in llm_policies()]

