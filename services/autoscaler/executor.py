"""How replicas are started and stopped: one small port, several adapters.

The local-process executor (local.py) is the embedded default; a Kubernetes executor
(scaling a Deployment's `scale` subresource) is the production adapter (issue #6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared.events import Deployment


@dataclass(frozen=True)
class Replica:
    runner_id: str
    deployment_id: str
    pop: str
    slot: int
    url: str


class ReplicaExecutor(Protocol):
    async def start(self, deployment: Deployment, pop: str, slot: int) -> Replica: ...

    async def stop(self, replica: Replica) -> None: ...

    def running(self) -> list[Replica]: ...
