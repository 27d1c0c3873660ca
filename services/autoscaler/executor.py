"""How replicas are started and stopped: one small port, several adapters.

The local-process executor (local.py) is the embedded default; the Kubernetes executor
(kubernetes.py: a Deployment per deployment × PoP, scaled through its `scale` subresource)
is the production adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from edgeinfer.shared.events import Deployment


@dataclass(frozen=True)
class Replica:
    runner_id: str
    deployment_id: str
    pop: str
    slot: int
    url: str  # "" where the executor does not know its runners one by one (Kubernetes pods)
    spec: str = ""  # what it runs (replica_spec); "" when not known (rolled to be sure)


def replica_spec(model_version: str, artifact_digest: str, framework: str, gpu_class: str) -> str:
    """What a replica runs: a change of any part rolls the deployment's replicas."""
    return f"{model_version}|{artifact_digest}|{framework}|{gpu_class}"


def deployment_spec(d: Deployment) -> str:
    return replica_spec(d.model_version, d.artifact_digest, d.framework, d.gpu_class)


class ReplicaExecutor(Protocol):
    async def start(self, deployment: Deployment, pop: str, slot: int) -> Replica: ...

    async def stop(self, replica: Replica) -> None: ...

    def running(self) -> list[Replica]: ...

    def exited(self) -> list[Replica]:
        """Replicas whose process died on its own: the autoscaler replaces them."""
        ...

    async def roll(self, deployment: Deployment, pop: str) -> bool:
        """Bring the replicas of `deployment` in `pop` to its current spec, if this executor
        rolls them itself (Kubernetes: a RollingUpdate); False: the autoscaler replaces
        them one by one (services/autoscaler/rollout.py)."""
        ...

    async def stop_all(self) -> None:
        """On autoscaler shutdown: local processes stop with it; a Kubernetes fleet stays."""
        ...

    async def adopt(self, deployments: list[Deployment]) -> None:
        """On start: take over the replicas an earlier autoscaler left running (it died, or
        it was replaced), so that none is started twice or left unmanaged."""
        ...
