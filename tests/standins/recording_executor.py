"""An executor that records what the autoscaler asks of it instead of spawning processes:
for the autoscaler's loop tests and bench/autoscaler.py (spawning is measured elsewhere,
and the e2e tests drive the real local-process executor)."""

from __future__ import annotations

import time

from edgeinfer.services.autoscaler.executor import Replica, deployment_spec
from edgeinfer.shared.events import Deployment


class RecordingExecutor:
    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        self.started: list[tuple[str, str, float]] = []  # (runner id, PoP, monotonic time)

    async def start(self, deployment: Deployment, pop: str, slot: int) -> Replica:
        replica = Replica(f"r{len(self.started)}", deployment.id, pop, slot, "http://x",
                          deployment_spec(deployment))
        self.replicas[replica.runner_id] = replica
        self.started.append((replica.runner_id, pop, time.monotonic()))
        return replica

    async def stop(self, replica: Replica) -> None:
        self.replicas.pop(replica.runner_id, None)

    def running(self) -> list[Replica]:
        return list(self.replicas.values())

    def exited(self) -> list[Replica]:
        return []

    async def roll(self, deployment: Deployment, pop: str) -> bool:
        return False  # replaced one by one, as local processes are

    async def stop_all(self) -> None:
        self.replicas.clear()

    async def adopt(self, deployments: list[Deployment]) -> None:
        """Nothing was left running before it."""
