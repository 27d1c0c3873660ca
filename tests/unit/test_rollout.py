"""Rolling replicas to a new spec (services/autoscaler/rollout.py): surge one, drain an
old one only once a new one is ready, never fewer ready replicas than the target."""

from __future__ import annotations

import random

from edgeinfer.services.autoscaler.decide import ReplicaView
from edgeinfer.services.autoscaler.rollout import SURGE, rollout_changes


def view(runner_id: str, state: str = "ready", in_flight: int = 0) -> ReplicaView:
    return ReplicaView(runner_id, state, in_flight)


def test_nothing_outdated_is_plain_scaling() -> None:
    step = rollout_changes(3, [view("a"), view("b")], outdated_ids=set())
    assert (step.start, step.stop, step.rolling) == (1, (), False)


def test_a_new_replica_is_started_beside_the_old_ones_before_any_is_drained() -> None:
    old = [view("o1", in_flight=2), view("o2", in_flight=1)]
    step = rollout_changes(2, old, outdated_ids={"o1", "o2"})
    assert (step.start, step.stop) == (1, ())  # the surge; both old keep serving


def test_an_old_replica_is_drained_once_a_new_one_is_ready_the_least_busy_first() -> None:
    replicas = [view("o1", in_flight=3), view("o2", in_flight=0), view("n1")]
    step = rollout_changes(2, replicas, outdated_ids={"o1", "o2"})
    assert step.stop == ("o2",) and step.start == 0  # at the surge until o2 has gone


def test_a_starting_new_replica_drains_nothing() -> None:
    replicas = [view("o1"), view("o2"), view("n1", "starting")]
    step = rollout_changes(2, replicas, outdated_ids={"o1", "o2"})
    assert (step.start, step.stop) == (0, ())


def test_scaled_to_zero_the_old_replicas_just_stop() -> None:
    step = rollout_changes(0, [view("o1"), view("o2", "starting")], outdated_ids={"o1", "o2"})
    assert (step.start, sorted(step.stop)) == (0, ["o1", "o2"])


def test_a_whole_rollout_never_drops_below_the_target_and_ends_all_new() -> None:
    """Simulated to the end, each new replica ready one step after it starts, for many
    targets and fleet sizes."""
    rng = random.Random(7)
    for _ in range(200):
        target = rng.randint(1, 6)
        replicas = {f"o{i}": "ready" for i in range(rng.randint(1, 8))}
        outdated = set(replicas)
        for step_no in range(50):
            views = [view(r, s, rng.randint(0, 3)) for r, s in replicas.items()]
            step = rollout_changes(target, views, outdated)
            ready_before = sum(s == "ready" for s in replicas.values())
            for runner_id in step.stop:
                del replicas[runner_id]
            # Draining never takes the ready replicas below the target (or below what was
            # ready, when fewer than the target were).
            assert sum(s == "ready" for s in replicas.values()) >= min(target, ready_before)
            # At most one over the target in all (more only while old ones beyond it drain).
            assert step.start == 0 or len(replicas) + step.start <= target + SURGE
            for r in [r for r, s in replicas.items() if s == "starting"]:
                replicas[r] = "ready"
            replicas |= {f"n{step_no}-{i}": "starting" for i in range(step.start)}
            if not step.rolling and step.start == 0 and not step.stop:
                break
        assert not set(replicas) & outdated
        assert len(replicas) == target and all(s == "ready" for s in replicas.values())
