"""Rolling a deployment's replicas to a new model version or GPU class (pure).

A replica runs what its deployment said when it started (`Replica.spec`). When the
deployment changes, the replicas of the old spec are replaced one at a time: a new one is
started beside them (one replica over the target at most: the surge), and an old one is
drained only once a new one is ready, so the ready replicas never drop below the target
while the load is served. The Kubernetes executor hands the same rule to Kubernetes
(a RollingUpdate with maxSurge 1, maxUnavailable 0).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from edgeinfer.services.autoscaler.decide import ReplicaView, replica_changes

SURGE = 1


@dataclass(frozen=True)
class Rollout:
    start: int  # replicas of the new spec to start now
    stop: tuple[str, ...]  # replicas of the old spec to drain now
    outdated: int  # live replicas of the old spec before these changes
    updated_ready: int  # ready replicas of the new spec

    @property
    def rolling(self) -> bool:
        return self.outdated > 0


def rollout_changes(target: int, replicas: Sequence[ReplicaView],
                    outdated_ids: Collection[str]) -> Rollout:
    """How to move `replicas` (some of them `outdated_ids`) towards `target` replicas of
    the new spec. With none outdated this is plain scaling (`replica_changes`). Otherwise
    new replicas are started up to the target, at most SURGE over it in all; old ones are
    drained as new ones become ready (starting ones first: they serve nothing yet), and
    at once when the target is 0."""
    old = [r for r in replicas if r.runner_id in outdated_ids and r.state != "draining"]
    new = [r for r in replicas if r.runner_id not in outdated_ids]
    new_ready = sum(r.state == "ready" for r in new)
    if not old:
        start, stop = replica_changes(target, new)
        return Rollout(start, stop, 0, new_ready)
    new_live = sum(r.state != "draining" for r in new)
    start = max(0, min(target - new_live, target + SURGE - new_live - len(old)))
    keep_old = max(0, target - new_ready)
    # Drained first: old replicas not yet ready, then the idle, then the busiest last
    # (a drain lets their requests finish; nothing is cut).
    order = sorted(old, key=lambda r: (r.state == "ready", r.in_flight, r.runner_id))
    stop = tuple(r.runner_id for r in order[:max(0, len(old) - keep_old)])
    return Rollout(start, stop, len(old), new_ready)
