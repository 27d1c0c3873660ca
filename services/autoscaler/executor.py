"""How replicas are started and stopped: one small port, several adapters.

The local-process executor (local.py) is the embedded default; the Kubernetes executor
(kubernetes.py: a Deployment per deployment × PoP, scaled through its `scale` subresource)
is the production adapter.
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

    def exited(self) -> list[Replica]:
        """Replicas whose process died on its own: the autoscaler replaces them."""
        ...

    async def stop_all(self) -> None:
        """On autoscaler shutdown: local processes stop with it; a Kubernetes fleet stays."""
        ...

    async def adopt(self, deployments: list[Deployment]) -> None:
        """On start: take over the replicas an earlier autoscaler left running (it died, or
        it was replaced), so that none is started twice or left unmanaged."""
        ...
