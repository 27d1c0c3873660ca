"""How many replicas each (deployment, PoP) should run: a pure function.

Walking-skeleton policy: keep `min_replicas` in every allowed PoP, and at least one
where the router has recently signalled demand (wake from zero). The load-driven
policy with stable/panic windows and learned keep-alive is issue #6.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.events import Deployment


@dataclass(frozen=True)
class Target:
    deployment: Deployment
    pop: str
    replicas: int
    reason: str


def targets(deployments: Iterable[Deployment], demand_at: Mapping[str, float], now: float,
            demand_keepalive_s: float = 600.0) -> list[Target]:
    out = []
    for d in deployments:
        woke = now - demand_at.get(d.id, float("-inf")) < demand_keepalive_s
        for pop in d.allowed_pops:
            if d.min_replicas > 0:
                out.append(Target(d, pop, min(d.min_replicas, d.max_replicas), "min_replicas"))
            elif woke:
                out.append(Target(d, pop, 1, "demand"))
            else:
                out.append(Target(d, pop, 0, "idle"))
    return out
