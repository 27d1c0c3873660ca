"""The live scaling policy (decide.py), schedules and placement — pure, time passed in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edgeinfer.services.autoscaler.decide import (
    Decision,
    Inputs,
    Observation,
    PolicyState,
    ReplicaView,
    ScaleConfig,
    decide,
    replica_changes,
)
from edgeinfer.services.autoscaler.placement import place
from edgeinfer.shared.schedules import InvalidSchedule, Schedule, scheduled_min, validate

CONFIG = ScaleConfig()  # 60 s stable, 6 s panic, ×2 threshold, utilisation 0.7
CALM = PolicyState()


def steady(level: float, now: float, seconds: int = 60) -> list[Observation]:
    return [Observation(now - i, level) for i in range(seconds)]


def run(now: float, observations: list[Observation], replicas: list[ReplicaView], *,
        state: PolicyState = CALM, **kw: object) -> Decision:
    inputs = Inputs(now=now, capacity=8, min_replicas=kw.pop("min_replicas", 0),  # type: ignore[arg-type]
                    max_replicas=kw.pop("max_replicas", 10), replicas=replicas,  # type: ignore[arg-type]
                    observations=observations, **kw)  # type: ignore[arg-type]
    return decide(inputs, state, CONFIG)


def ready(n: int, busy: int = 0) -> list[ReplicaView]:
    return [ReplicaView(f"r{i}", "ready", 1 if i < busy else 0) for i in range(n)]


def test_steady_load_asks_for_load_over_target_per_replica() -> None:
    d = run(1000.0, steady(12.0, 1000.0), ready(2, busy=2), last_request_at=999.0)
    assert (d.desired, d.start, d.stop) == (3, 1, ())  # ceil(12 / 5.6); 3 < 2 × 2: no panic
    assert d.reason.startswith("stable")


def test_a_burst_panics_at_once_and_does_not_drop_until_a_calm_stable_window() -> None:
    now = 1000.0
    calm = steady(2.0, now - 6)  # one replica's worth for a minute...
    burst = [Observation(now - i, 30.0) for i in range(6)]  # ...then 30 in flight for 6 s
    d = run(now, calm + burst, ready(1, busy=1), last_request_at=now)
    assert d.reason.startswith("panic") and d.desired == 6 and d.start == 5
    assert d.state.panic_until == now + 60
    # The burst ends: 10 s later the panic window is calm, but no scale-down while panicking.
    later = run(now + 10, calm + burst + steady(1.0, now + 10, 10), ready(6),
                state=d.state, last_request_at=now + 10)
    assert later.desired == 6 and later.stop == ()
    # After a whole stable window without panic: back to the stable average.
    done = run(now + 61, steady(1.0, now + 61), ready(6), state=later.state, last_request_at=now + 61)
    assert done.desired == 1 and len(done.stop) == 5


def test_starting_replicas_are_not_capacity_and_are_never_stopped() -> None:
    replicas = [ReplicaView("a", "starting"), ReplicaView("b", "starting")]
    d = run(1000.0, steady(8.0, 1000.0), replicas, last_request_at=1000.0)
    assert d.desired == 2 and d.start == 0  # on their way: no second start for the same load
    idle = run(5000.0, [], replicas, last_request_at=0.0)
    assert idle.desired == 0 and idle.stop == () and idle.holds  # never killed while starting


def test_scale_down_stops_only_idle_ready_replicas() -> None:
    d = run(1000.0, steady(1.0, 1000.0), [ReplicaView("a", "ready", 3), ReplicaView("b", "ready", 0),
                                         ReplicaView("c", "ready", 2)], last_request_at=1000.0)
    assert d.desired == 1 and d.stop == ("b",) and d.holds


def test_scale_to_zero_follows_the_keepalive_and_demand_wakes_at_once() -> None:
    kept = run(1000.0, [], ready(1), last_request_at=1000.0 - 300, keepalive_s=900.0)
    assert kept.desired == 1 and "learned 900 s" in kept.reason
    fallback = run(1000.0, [], ready(1), last_request_at=1000.0 - 300)
    assert fallback.desired == 1 and "fallback 600 s" in fallback.reason
    gone = run(1000.0, [], ready(1), last_request_at=1000.0 - 700)
    assert gone.desired == 0 and gone.stop == ("r0",)
    woken = run(1000.0, [], [], last_request_at=None, demand_at=999.5)
    assert woken.desired == 1 and woken.start == 1 and "demand" in woken.reason


def test_floors_and_ceiling() -> None:
    assert run(1000.0, [], [], min_replicas=2).desired == 2
    scheduled = run(1000.0, [], [], min_replicas=1, schedule_min=3)
    assert scheduled.desired == 3 and "schedule" in scheduled.reason
    capped = run(1000.0, steady(500.0, 1000.0), ready(1), max_replicas=4, last_request_at=1000.0)
    assert capped.desired == 4 and "max_replicas" in capped.reason


BERLIN_OFFICE = Schedule(cron="0 8 * * 1-5", timezone="Europe/Berlin", duration_s=10 * 3600,
                         pop="eu-west", min_replicas=2)


@pytest.mark.parametrize("utc, expected", [
    ("2026-11-26T06:59:00", 0),  # Thursday 07:59 in Berlin (CET, UTC+1)
    ("2026-11-26T07:00:00", 2),  # 08:00
    ("2026-11-26T16:59:59", 2),
    ("2026-11-26T17:00:00", 0),  # 18:00
    ("2026-11-28T10:00:00", 0),  # Saturday
    ("2026-07-01T06:00:00", 2),  # 08:00 CEST (UTC+2): daylight saving follows the zone
])
def test_schedules_follow_their_time_zone(utc: str, expected: int) -> None:
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert scheduled_min([BERLIN_OFFICE], "eu-west", now) == expected
    assert scheduled_min([BERLIN_OFFICE], "us-east", now) == 0


def sched(cron: str = "0 8 * * 1-5", timezone: str = "UTC", duration_s: int = 3600,
          pop: str = "eu-west") -> Schedule:
    return Schedule(cron=cron, timezone=timezone, duration_s=duration_s, pop=pop, min_replicas=1)


@pytest.mark.parametrize("schedule, reason", [
    (sched(cron="0 8 * *"), "5-field"),
    (sched(timezone="Mars/Olympus"), "time zone"),
    (sched(duration_s=10), "duration_s"),
    (sched(pop="ap-south"), "not one of"),
])
def test_bad_schedules_are_refused_with_a_reason(schedule: Schedule, reason: str) -> None:
    with pytest.raises(InvalidSchedule, match=reason):
        validate(schedule, ["eu-west", "us-east"])


def test_placement_spills_to_the_nearest_allowed_pop_with_room() -> None:
    nearest = {"eu-west": ["eu-central", "us-east"], "eu-central": ["eu-west", "us-east"],
               "us-east": ["eu-central", "eu-west"]}
    # eu-west is full after 1; eu-central (nearest) has 2 free; us-east is not allowed.
    p = place({"eu-west": 4, "eu-central": 0}, {"eu-west": 1}, {"eu-west": 0, "eu-central": 2},
              nearest)
    assert p.replicas == {"eu-west": 1, "eu-central": 2}
    assert p.spilled == {"eu-west": {"eu-central": 2}} and p.unplaced == 1
    unlimited = place({"eu-west": 3}, {}, {"eu-west": None}, nearest)
    assert unlimited.replicas == {"eu-west": 3} and unlimited.unplaced == 0


def test_a_learned_window_unloads_then_prewarms_before_the_expected_request() -> None:
    """Requests every ~30 min (learned: pre-warm at 27 min, keep 6 min): right after the
    load ends there is nothing to keep; a replica is started 10 s before the 27th minute
    and kept until 33 min; after that, zero."""
    def at(idle_s: float, replicas: list[ReplicaView]) -> Decision:
        return run(10_000.0, [], replicas, last_request_at=10_000.0 - idle_s,
                   keepalive_s=360.0, prewarm_s=1620.0)

    assert at(120, ready(1)).desired == 0 and "unloaded" in at(120, ready(1)).reason
    early = at(1612, [])  # 8 s before the 27th minute: within the 10 s lead
    assert early.desired == 1 and early.start == 1 and "pre-warmed" in early.reason
    assert at(1900, ready(1)).desired == 1  # within the learned window
    assert at(2000, ready(1)).desired == 0  # past pre-warm + keep-alive
    # While the history is thin (no learned keep-alive) a pre-warm is ignored.
    thin = run(10_000.0, [], ready(1), last_request_at=10_000.0 - 120, prewarm_s=1620.0)
    assert thin.desired == 1 and "fallback" in thin.reason


def test_a_scale_down_delay_keeps_the_most_asked_for_within_the_window() -> None:
    config = ScaleConfig(scale_down_delay_s=300.0)
    burst = decide(Inputs(now=1000.0, capacity=8, min_replicas=0, max_replicas=10,
                          replicas=ready(1, busy=1), observations=steady(30.0, 1000.0),
                          last_request_at=1000.0), CALM, config)
    assert burst.desired == 6
    calm = decide(Inputs(now=1200.0, capacity=8, min_replicas=0, max_replicas=10,
                         replicas=ready(6), observations=steady(1.0, 1200.0),
                         last_request_at=1200.0), PolicyState(recent=burst.state.recent), config)
    assert calm.desired == 6 and "scale-down delay" in calm.reason and calm.stop == ()
    # Ticks every second do not renew the hold: 300 s after the burst it ends.
    state = calm.state
    for now in range(1201, 1301):
        tick = decide(Inputs(now=float(now), capacity=8, min_replicas=0, max_replicas=10,
                             replicas=ready(6), observations=steady(1.0, float(now)),
                             last_request_at=float(now)), state, config)
        state = tick.state
        assert tick.desired == (6 if now < 1300 else 1), now
    assert len(tick.stop) == 5


def test_requests_waiting_now_panic_before_the_panic_average_catches_up() -> None:
    # The module docstring's example: a quiet 5 s on one ready replica, then 20 this second.
    now = 1000.0
    quiet = [Observation(now - i, 0.0) for i in range(1, 6)]
    burst = [*quiet, Observation(now, 20.0)]
    d = run(now, burst, ready(1, busy=1), last_request_at=now)
    assert d.reason.startswith("panic") and (d.desired, d.start) == (4, 3)
    # Knative's KPA waits for the 6-s average (3.3 → one replica): no start yet.
    kpa = decide(Inputs(now=now, capacity=8, min_replicas=0, max_replicas=10,
                        replicas=ready(1, busy=1), observations=burst, last_request_at=now),
                 CALM, ScaleConfig(panic_on_waiting=False))
    assert (kpa.desired, kpa.start) == (1, 0)
    # 8 in flight on one replica of capacity 8 is full, not waiting: the average decides.
    full = run(now, [*quiet, Observation(now, 8.0)], ready(1, busy=1), last_request_at=now)
    assert full.start == 0


@pytest.mark.parametrize(("replicas", "demand_at", "expected"), [
    pytest.param(ready(3), None, (3, 0, ()), id="keeps-what-runs-and-stops-nothing"),
    pytest.param([], 998.0, (1, 1, ()), id="a-held-request-still-wakes-an-empty-pop"),
    pytest.param([], 900.0, (0, 0, ()), id="an-old-demand-does-not"),
    pytest.param([*ready(1), ReplicaView("r9", "draining")], None, (1, 0, ()),
                 id="draining-replicas-are-not-counted"),
])
def test_blind_the_policy_holds(replicas: list[ReplicaView], demand_at: float | None,
                                expected: tuple[int, int, tuple[str, ...]]) -> None:
    # Observations would ask for zero replicas; with metrics down they are not trusted.
    panicking = PolicyState(panic_until=1030.0, panic_desired=5)
    d = run(1000.0, steady(0.0, 1000.0), replicas, state=panicking, metrics_ok=False,
            demand_at=demand_at)
    assert (d.desired, d.start, d.stop) == expected
    assert d.reason == "load metrics unavailable: holding"
    assert d.state == panicking  # nothing learned from no data


@pytest.mark.parametrize(("target", "replicas", "expected"), [
    pytest.param(3, ready(1), (2, ()), id="start-the-difference"),
    pytest.param(1, ready(3), (0, ("r2", "r1")), id="stop-idle-highest-ids-first"),
    pytest.param(0, ready(2, busy=2), (0, ()), id="never-stop-busy-replicas"),
    pytest.param(0, [ReplicaView("r0", "starting")], (0, ()), id="never-stop-starting-ones"),
    pytest.param(1, [ReplicaView("r0", "draining")], (1, ()), id="a-draining-replica-is-gone"),
])
def test_replica_changes(target: int, replicas: list[ReplicaView],
                         expected: tuple[int, tuple[str, ...]]) -> None:
    assert replica_changes(target, replicas) == expected
