"""Where a request goes: a pure function of the candidate replicas and their distance.

Among the PoPs the deployment's residency rule allows, minimise expected time to
response = network RTT from the client's region + expected queueing at the PoP. Within
a PoP the replica is picked by power-of-two-choices on outstanding requests: two
replicas drawn at random, the less loaded wins — near-least-loaded without every router
herding onto the same replica. The random source is passed in, so the function is pure.
Never outside the residency rule: when every allowed replica is full the answer is a
refusal with a Retry-After, not a move abroad (design.md, invariant 5). Shared with the
simulator.

Speed: the shell passes the allowed PoPs nearest first (`order_pops`, cached per client
region and deployment), so the search stops at the first PoP whose RTT alone exceeds the
best expected time found — usually after one or two PoPs, whatever the fleet's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

FAR_MS = 1000.0  # a PoP missing from the latency map counts as this far away


@dataclass(frozen=True, slots=True)
class ReplicaView:
    runner_id: str
    pop: str
    url: str
    ready: bool
    capacity: int
    outstanding: int
    # Mean service time of one request on this replica, for the queueing estimate.
    service_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class Route:
    replica: ReplicaView
    expected_ms: float


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: str  # "no_replica" (cold: nothing ready anywhere allowed) or "saturated"
    retry_after_s: int


def _two_choices(usable: list[ReplicaView], draw: Callable[[int], int]) -> ReplicaView:
    first = draw(len(usable))
    second = draw(len(usable) - 1)
    second += second >= first  # two distinct replicas
    a, b = usable[first], usable[second]
    return a if a.outstanding / a.capacity <= b.outstanding / b.capacity else b


def order_pops(allowed_pops: Iterable[str], rtt_ms: Mapping[str, float]) -> list[tuple[str, float]]:
    """The allowed PoPs with their RTT, nearest first (ties by name, so it is deterministic)."""
    return sorted(((pop, rtt_ms.get(pop, FAR_MS)) for pop in set(allowed_pops)),
                  key=lambda item: (item[1], item[0]))


def expected_ms(replica: ReplicaView, rtt_ms: float) -> float:
    # Requests ahead of ours, each taking service_ms, spread over `capacity` slots.
    return rtt_ms + replica.service_ms * (replica.outstanding + 1) / replica.capacity


def choose(nearest_first: Sequence[tuple[str, float]],
           replicas_by_pop: Mapping[str, Sequence[ReplicaView]],
           draw: Callable[[int], int],
           exclude: frozenset[str] = frozenset()) -> Route | NoRoute:
    """The replica to send to, or why there is none.

    `nearest_first` is `order_pops(...)`: the allowed PoPs and their RTT, nearest first.
    `draw(n)` returns a random integer in [0, n) (e.g. `random.Random().randrange`).
    `exclude` holds runner ids that already failed this request.
    """
    best: Route | None = None
    any_ready = False
    for pop, rtt_ms in nearest_first:
        if best is not None and rtt_ms >= best.expected_ms:
            break  # every replica further away costs at least its RTT
        usable = []
        for replica in replicas_by_pop.get(pop, ()):
            if not replica.ready or replica.runner_id in exclude:
                continue
            any_ready = True
            if replica.outstanding < replica.capacity:
                usable.append(replica)
        if not usable:
            continue
        pick = usable[0] if len(usable) == 1 else _two_choices(usable, draw)
        cost = expected_ms(pick, rtt_ms)
        if best is None or cost < best.expected_ms:
            best = Route(pick, cost)
    if best is not None:
        return best
    if any_ready:
        return NoRoute("saturated", retry_after_s=1)
    return NoRoute("no_replica", retry_after_s=5)
