import random
from collections import defaultdict

import pytest

from edgeinfer.services.router.policy import NoRoute, ReplicaView, Route, order_pops
from edgeinfer.services.router.policy import choose as choose_nearest_first

RTT = {"eu-west": 8.0, "us-east": 85.0}


def choose(allowed: list[str], replicas: list[ReplicaView], rtt: dict[str, float],
           exclude: frozenset[str] = frozenset(), seed: int = 0) -> Route | NoRoute:
    by_pop: dict[str, list[ReplicaView]] = defaultdict(list)
    for r in replicas:
        by_pop[r.pop].append(r)
    return choose_nearest_first(order_pops(allowed, rtt), by_pop, random.Random(seed).randrange,
                                exclude)


def replica(runner_id: str, pop: str, outstanding: int = 0, capacity: int = 4,
            ready: bool = True) -> ReplicaView:
    return ReplicaView(runner_id, pop, f"http://{runner_id}", ready, capacity, outstanding)


def test_nearest_pop_wins_when_it_has_capacity() -> None:
    route = choose(["eu-west", "us-east"], [replica("a", "us-east"), replica("b", "eu-west")], RTT)
    assert isinstance(route, Route) and route.replica.runner_id == "b"


def test_of_two_replicas_in_a_pop_the_less_loaded_wins() -> None:
    for seed in range(20):
        route = choose(["eu-west"], [replica("a", "eu-west", 3), replica("b", "eu-west", 1)],
                       RTT, seed=seed)
        assert isinstance(route, Route) and route.replica.runner_id == "b"


def test_power_of_two_choices_never_picks_the_most_loaded_of_several() -> None:
    replicas = [replica(f"r{i}", "eu-west", outstanding=i, capacity=8) for i in range(6)]
    picks = {choose(["eu-west"], replicas, RTT, seed=s).replica.runner_id  # type: ignore[union-attr]
             for s in range(200)}
    assert "r5" not in picks  # it loses every comparison
    assert len(picks) > 1  # and the load is spread, not herded onto one replica


def test_load_spills_to_the_next_allowed_pop_when_the_nearest_is_full() -> None:
    route = choose(["eu-west", "us-east"],
                   [replica("a", "eu-west", outstanding=4), replica("b", "us-east")], RTT)
    assert isinstance(route, Route) and route.replica.pop == "us-east"


@pytest.mark.parametrize(
    ("replicas", "reason"),
    [
        pytest.param([replica("a", "eu-west", outstanding=4)], "saturated", id="full"),
        pytest.param([replica("a", "eu-west", ready=False)], "no_replica", id="starting"),
        pytest.param([], "no_replica", id="scaled-to-zero"),
    ],
)
def test_refusals_carry_a_reason_and_retry_after(replicas: list[ReplicaView], reason: str) -> None:
    route = choose(["eu-west"], [*replicas, replica("z", "us-east")], RTT)
    assert isinstance(route, NoRoute)
    assert route.reason == reason and route.retry_after_s > 0


def test_a_failed_replica_is_not_tried_again() -> None:
    for seed in range(20):
        route = choose(["eu-west"], [replica("a", "eu-west"), replica("b", "eu-west", 2)], RTT,
                       exclude=frozenset({"a"}), seed=seed)
        assert isinstance(route, Route) and route.replica.runner_id == "b"


def test_residency_is_never_violated_on_random_topologies() -> None:
    rng = random.Random(7)
    pops = [f"p{i}" for i in range(8)]
    for _ in range(2000):
        allowed = rng.sample(pops, rng.randint(1, 4))
        replicas = [replica(f"r{i}", rng.choice(pops), rng.randint(0, 5), rng.randint(1, 4),
                            rng.random() < 0.8) for i in range(rng.randint(0, 12))]
        rtt = {p: rng.uniform(1, 200) for p in pops}
        route = choose(allowed, replicas, rtt)
        if isinstance(route, Route):
            assert route.replica.pop in allowed
            assert route.replica.outstanding < route.replica.capacity
        else:
            assert not any(r.pop in allowed and r.ready and r.outstanding < r.capacity
                           for r in replicas)


def test_the_nearest_pop_with_room_wins_when_pops_are_far_apart() -> None:
    rng = random.Random(11)
    pops = [f"p{i}" for i in range(30)]
    for trial in range(2000):
        replicas = [replica(f"r{i}", rng.choice(pops), rng.randint(0, 4), 4)
                    for i in range(rng.randint(1, 40))]
        # PoPs 100 ms apart: queueing (at most 1 ms here) never outweighs distance.
        rtt = {p: 100.0 * i for i, p in enumerate(rng.sample(pops, len(pops)))}
        allowed = rng.sample(pops, rng.randint(1, 30))
        route = choose(allowed, replicas, rtt, seed=trial)
        with_room = [r.pop for r in replicas
                     if r.pop in allowed and r.outstanding < r.capacity]
        if with_room:
            assert isinstance(route, Route)
            assert route.replica.pop == min(with_room, key=rtt.__getitem__)
        else:
            assert isinstance(route, NoRoute)
