"""What runs where: the executor's replicas seen through their heartbeats, the GPU slots
a PoP still has — the inputs the policy and placement are given each tick — and which
replicas run an older spec than their deployment's (a rollout's step)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import Gauge

from edgeinfer.services.autoscaler.decide import ReplicaView
from edgeinfer.services.autoscaler.executor import Replica, ReplicaExecutor, deployment_spec
from edgeinfer.services.autoscaler.metrics import HeartbeatConcurrency
from edgeinfer.services.autoscaler.rollout import Rollout, rollout_changes
from edgeinfer.shared.events import Deployment

# Replicas whose fresh heartbeat says `ready`: with desired replicas above zero and none
# ready for minutes, runners are not starting or not heard (deploy/observability alerts).
READY = Gauge("edgeinfer_autoscaler_ready_replicas",
              "Replicas whose fresh heartbeat says ready.", ["deployment", "pop"])


def replica_views(executor: ReplicaExecutor, heartbeats: HeartbeatConcurrency,
                  deployment_id: str, pop: str) -> list[tuple[Replica, ReplicaView]]:
    """The executor's replicas with their state from heartbeats: by runner id where the
    executor knows it (local processes: a replica with its URL), else paired with the
    PoP's other fresh beats (Kubernetes pods report their pod name). No beat yet: starting
    — never the last beat of a runner just stopped, which would pass a new replica off as
    draining or ready."""
    mine = [r for r in executor.running() if r.deployment_id == deployment_id and r.pop == pop]
    beats = heartbeats.fresh(deployment_id, pop)
    spare = [b for rid, b in sorted(beats.items()) if rid not in {r.runner_id for r in mine}]
    out = []
    for r in mine:
        beat = beats.get(r.runner_id) or (spare.pop(0) if spare and not r.url else None)
        state = beat.state if beat is not None else "starting"
        out.append((r, ReplicaView(r.runner_id, state, beat.in_flight if beat else 0)))
    READY.labels(deployment_id, pop).set(sum(view.state == "ready" for _, view in out))
    return out


def free_slots(executor: ReplicaExecutor, deployments: Iterable[Deployment],
               pop_capacity: Mapping[tuple[str, str], int], d: Deployment) -> dict[str, int | None]:
    """Slots of `d`'s GPU class still free per allowed PoP, not counting `d`'s own replicas
    (None: no limit configured)."""
    classes = {dep.id: dep.gpu_class for dep in deployments}
    free: dict[str, int | None] = {}
    for pop in d.allowed_pops:
        slots = pop_capacity.get((pop, d.gpu_class))
        used = sum(1 for r in executor.running() if r.pop == pop
                   and classes.get(r.deployment_id) == d.gpu_class and r.deployment_id != d.id)
        free[pop] = None if slots is None else max(0, slots - used)
    return free


async def rollout_step(executor: ReplicaExecutor, d: Deployment, pop: str, target: int,
                       pairs: list[tuple[Replica, ReplicaView]]) -> Rollout:
    """The replicas to start and stop: plain scaling, or a step of rolling those that run
    an older spec of `d` (a new model version or GPU class) when the executor does not
    roll them itself."""
    spec = deployment_spec(d)
    outdated = {r.runner_id for r, _ in pairs if r.spec != spec}
    if outdated and await executor.roll(d, pop):
        outdated = set()
    return rollout_changes(target, [view for _, view in pairs], outdated)
