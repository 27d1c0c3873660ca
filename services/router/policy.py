"""Where a request goes: a pure function of the request, the replicas and the latency map.

Among the PoPs the deployment's residency rule allows, minimise expected time to
response = network RTT from the client's region + expected queueing at that PoP; within
the PoP take the replica with the fewest outstanding requests. Never outside the
residency rule: when every allowed replica is full the answer is a refusal with a
Retry-After, not a move abroad (design.md, invariant 5). Shared with the simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    runner_id: str
    pop: str
    url: str
    ready: bool
    capacity: int
    outstanding: int
    # Mean service time of one request on this replica, for the queueing estimate.
    service_ms: float = 1.0


@dataclass(frozen=True)
class Route:
    replica: ReplicaView
    expected_ms: float


@dataclass(frozen=True)
class NoRoute:
    reason: str  # "no_replica" (cold: nothing ready anywhere allowed) or "saturated"
    retry_after_s: int


def expected_ms(replica: ReplicaView, rtt_ms: float) -> float:
    # Requests ahead of ours, each taking service_ms, spread over `capacity` slots.
    return rtt_ms + replica.service_ms * (replica.outstanding + 1) / max(replica.capacity, 1)


def choose(allowed_pops: Iterable[str], replicas: Iterable[ReplicaView],
           rtt_ms: Mapping[str, float], exclude: frozenset[str] = frozenset()) -> Route | NoRoute:
    """The best replica, or why there is none.

    `rtt_ms` maps PoP → round-trip time from the client's region; a PoP missing from it
    counts as far away (1 s). `exclude` holds runner ids that already failed this request.
    """
    allowed = set(allowed_pops)
    best: Route | None = None
    any_ready = False
    for replica in replicas:
        if replica.pop not in allowed or not replica.ready or replica.runner_id in exclude:
            continue
        any_ready = True
        if replica.outstanding >= replica.capacity:
            continue
        cost = expected_ms(replica, rtt_ms.get(replica.pop, 1000.0))
        if best is None or cost < best.expected_ms:
            best = Route(replica, cost)
    if best is not None:
        return best
    if any_ready:
        return NoRoute("saturated", retry_after_s=1)
    return NoRoute("no_replica", retry_after_s=5)
