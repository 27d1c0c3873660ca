"""How many replicas each (deployment, PoP) should run: a pure function.

Keep `min_replicas` in every allowed PoP; a deployment allowed to scale to zero gets one
replica per allowed PoP from the router's first demand signal (wake from zero) until it
has seen no request for `scale_to_zero_after_s` (the router signals activity at most once
a second while it routes). The load-driven policy with stable/panic windows and the
learned keep-alive (keepalive.py, measured in `edgeinfer sim`) are issue #6.
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
            scale_to_zero_after_s: float = 600.0) -> list[Target]:
    out = []
    for d in deployments:
        woke = now - demand_at.get(d.id, float("-inf")) < scale_to_zero_after_s
        for pop in d.allowed_pops:
            if d.min_replicas > 0:
                out.append(Target(d, pop, min(d.min_replicas, d.max_replicas), "min_replicas"))
            elif woke:
                out.append(Target(d, pop, 1, "demand"))
            else:
                out.append(Target(d, pop, 0, "idle"))
    return out
