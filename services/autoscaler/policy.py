"""How many replicas each (deployment, PoP) should run: a pure function.

Keep `min_replicas` in every allowed PoP; a deployment allowed to scale to zero gets one
replica in a PoP from the router's first demand signal for that PoP (wake from zero) until
that PoP has seen no request for `scale_to_zero_after_s` (the router signals activity at
most once a second while it routes). The load-driven policy with stable/panic windows and the
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


def targets(deployments: Iterable[Deployment], demand_at: Mapping[tuple[str, str], float],
            now: float, scale_to_zero_after_s: float = 600.0) -> list[Target]:
    """`demand_at[(deployment, pop)]`: when the router last wanted that PoP; pop "" means
    any allowed PoP (a router that did not say)."""
    out = []
    never = float("-inf")
    for d in deployments:
        anywhere = demand_at.get((d.id, ""), never)
        for pop in d.allowed_pops:
            woke = now - max(anywhere, demand_at.get((d.id, pop), never)) < scale_to_zero_after_s
            if d.min_replicas > 0:
                out.append(Target(d, pop, min(d.min_replicas, d.max_replicas), "min_replicas"))
            elif woke:
                out.append(Target(d, pop, 1, "demand"))
            else:
                out.append(Target(d, pop, 0, "idle"))
    return out
