"""The executor's replicas seen through heartbeats (services/autoscaler/fleet.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from edgeinfer.services.autoscaler.executor import Replica
from edgeinfer.services.autoscaler.fleet import replica_views
from edgeinfer.services.autoscaler.metrics import HeartbeatConcurrency
from edgeinfer.shared.events import RunnerHeartbeat


class Executor:
    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas

    def running(self) -> list[Replica]:
        return self.replicas


def beat(runner_id: str, state: str) -> RunnerHeartbeat:
    return RunnerHeartbeat(id="b", source="runner", time=datetime.now(UTC), runner_id=runner_id,
                           pop="eu-west", region="eu-west", url="http://x", state=state,  # type: ignore[arg-type]
                           gpu_class="cpu", gpu_share=Decimal(1), device="cpu", capacity=8,
                           in_flight=0, deployment_id="dep", model_version="1")


def test_a_new_local_replica_is_starting_not_the_runner_just_stopped() -> None:
    """The stopped runner's last beat is still fresh: a local replica, known by its id,
    must not take it over (it would count as draining, and another would be started)."""
    heartbeats = HeartbeatConcurrency(lambda: 0.0)
    heartbeats.observe_heartbeat(beat("old", "draining"))
    heartbeats.observe_heartbeat(beat("kept", "ready"))
    executor = Executor([Replica("kept", "dep", "eu-west", 0, "http://a"),
                         Replica("new", "dep", "eu-west", 1, "http://b")])
    views = {r.runner_id: v.state for r, v in replica_views(executor, heartbeats, "dep", "eu-west")}  # type: ignore[arg-type]
    assert views == {"kept": "ready", "new": "starting"}


def test_kubernetes_replicas_are_paired_with_their_pods_beats() -> None:
    """Pods report their own names, which the executor does not know: replicas without a
    URL take the PoP's beats in turn."""
    heartbeats = HeartbeatConcurrency(lambda: 0.0)
    heartbeats.observe_heartbeat(beat("pod-a", "ready"))
    executor = Executor([Replica("ei-dep#0", "dep", "eu-west", 0, ""),
                         Replica("ei-dep#1", "dep", "eu-west", 1, "")])
    views = [v.state for _, v in replica_views(executor, heartbeats, "dep", "eu-west")]  # type: ignore[arg-type]
    assert views == ["ready", "starting"]
