"""The routing table: runners as their heartbeats describe them, plus the router's own count
of requests it has outstanding on each (fresher than any heartbeat)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from edgeinfer.services.router.policy import ReplicaView
from edgeinfer.shared.events import RunnerHeartbeat


@dataclass
class _Entry:
    beat: RunnerHeartbeat
    seen_at: float


class RoutingTable:
    def __init__(self, stale_after_s: float = 3.0) -> None:
        self._stale_after_s = stale_after_s
        self._by_deployment: dict[str, dict[str, _Entry]] = defaultdict(dict)
        self.outstanding: dict[str, int] = defaultdict(int)

    def observe(self, beat: RunnerHeartbeat, now: float) -> None:
        self._by_deployment[beat.deployment_id][beat.runner_id] = _Entry(beat, now)

    def replicas(self, deployment_id: str, now: float,
                 stale_after_s: float | None = None) -> list[ReplicaView]:
        """The replicas heard from within `stale_after_s` (default: a few heartbeats). While
        heartbeats cannot arrive at all (NATS down), the caller widens it: a replica that is
        really gone refuses the connection, and the request goes to the next one."""
        stale_after_s = self._stale_after_s if stale_after_s is None else stale_after_s
        entries = self._by_deployment.get(deployment_id, {})
        for runner_id in [r for r, e in entries.items() if now - e.seen_at > stale_after_s]:
            del entries[runner_id]  # missed its heartbeats: out
        return [ReplicaView(runner_id=e.beat.runner_id, pop=e.beat.pop, url=e.beat.url,
                            ready=e.beat.state == "ready", capacity=e.beat.capacity,
                            outstanding=self.outstanding[e.beat.runner_id])
                for e in entries.values()]

    def by_pop(self, deployment_id: str, now: float,
               stale_after_s: float | None = None) -> dict[str, list[ReplicaView]]:
        grouped: dict[str, list[ReplicaView]] = defaultdict(list)
        for replica in self.replicas(deployment_id, now, stale_after_s):
            grouped[replica.pop].append(replica)
        return grouped

    def mark_down(self, deployment_id: str, runner_id: str) -> None:
        self._by_deployment.get(deployment_id, {}).pop(runner_id, None)
