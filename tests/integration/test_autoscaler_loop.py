"""The autoscaler's live loop on real NATS: a load step in the runners' heartbeats becomes a
scale-up decision within 2 s, published with its reason; a held request's demand signal
wakes a deployment from zero at once; unreadable metrics hold every decision.

The executor here records what it is asked to do (the local-process executor is exercised
by the e2e tests); heartbeats are published the way runners publish them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
from nats.aio.client import Client as NATS

from edgeinfer.services.autoscaler.decide import ScaleConfig
from edgeinfer.services.autoscaler.metrics import MetricsUnavailable
from edgeinfer.services.autoscaler.service import AutoscalerConfig, AutoscalerService
from edgeinfer.shared.bus import ensure_streams
from edgeinfer.shared.events import (
    DemandSignal,
    Deployment,
    DeploymentUpdated,
    ListDeploymentsReply,
    RunnerHeartbeat,
    ScalingDecision,
    encode,
    new_id,
)
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import Pop
from tests.standins.recording_executor import RecordingExecutor

POPS = {"eu-west": Pop("eu-west", "eu-west", "eu"), "us-east": Pop("us-east", "us-east", "us")}


def deployment(min_replicas: int) -> Deployment:
    return Deployment(id="dep_loop", tenant_id="ten_loop", name="loop", model_name="m",
                      model_version="1", framework="onnx", artifact_digest="sha256:" + "0" * 64,
                      gpu_class="cpu", allowed_pops=["eu-west"], min_replicas=min_replicas,
                      max_replicas=8)


async def serve_deployments(nc: NATS, subjects: Subjects, d: Deployment,
                            as_of: int = 0) -> list[float]:
    """A registry's list reply; returns the times it was asked (to count re-lists)."""
    asked: list[float] = []

    async def reply(msg) -> None:  # type: ignore[no-untyped-def]
        asked.append(time.monotonic())
        await msg.respond(encode(ListDeploymentsReply(deployments=[d], as_of=as_of)))

    await nc.subscribe(subjects.list_deployments, cb=reply)
    return asked


class SteppedClock:
    """Monotonic time set by the test; wall time the machine's."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic

    def now(self) -> datetime:
        return datetime.now(UTC)


async def signal_demand(nc: NATS, subjects: Subjects, held_requests: int = 0,
                        excess_concurrency: float = 0.0, requests: int = 0) -> None:
    """A router's demand signal for dep_loop in eu-west, flushed."""
    await nc.publish(subjects.demand("dep_loop"), encode(DemandSignal(
        id=new_id(), source="router", time=datetime.now(UTC), deployment_id="dep_loop",
        pop="eu-west", held_requests=held_requests, excess_concurrency=excess_concurrency,
        requests=requests)))
    await nc.flush()


def beat(subjects: Subjects, runner_id: str, in_flight: int) -> tuple[str, bytes]:
    return subjects.heartbeat("eu-west", runner_id), encode(RunnerHeartbeat(
        id=new_id(), source="test", time=datetime.now(UTC), runner_id=runner_id, pop="eu-west",
        region="eu-west", url="http://x", state="ready", gpu_class="cpu", gpu_share=Decimal(1),
        device="cpu", capacity=8, in_flight=in_flight, deployment_id="dep_loop", model_version="1"))


async def test_a_load_step_is_a_scale_up_decision_within_two_seconds(nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    await ensure_streams(nc.jetstream(), subjects)
    await serve_deployments(nc, subjects, deployment(min_replicas=1))
    decisions: list[tuple[float, ScalingDecision]] = []

    async def on_decision(msg) -> None:  # type: ignore[no-untyped-def]
        decisions.append((time.monotonic(), msgspec.json.decode(msg.data, type=ScalingDecision)))

    await nc.subscribe(subjects.decision_wildcard, cb=on_decision)
    executor = RecordingExecutor()
    service = AutoscalerService(nc, subjects, executor, POPS, AutoscalerConfig(tick_s=0.5))
    await service.start()
    try:
        while not executor.started:  # min_replicas: 1 → the first replica
            await asyncio.sleep(0.05)
        runner_id = executor.started[0][0]
        for _ in range(6):  # calm: the replica is ready and idle
            await nc.publish(*beat(subjects, runner_id, 0))
            await asyncio.sleep(0.25)
        # The load step: the replica is full (8 in flight) and the router refuses what does
        # not fit, reporting it as excess concurrency once a second, as routers do.
        step_at = time.monotonic()
        while not any(d.desired > 1 for _, d in decisions):
            assert time.monotonic() - step_at < 5, "no scale-up decision"
            await nc.publish(*beat(subjects, runner_id, 8))
            await signal_demand(nc, subjects, excess_concurrency=24.0)
            await asyncio.sleep(1.0)
        at, decision = next((at, d) for at, d in decisions if d.desired > 1)
        assert at - step_at < 2.0, f"decision {at - step_at:.2f} s after the load step"
        assert decision.reason.startswith("panic") and decision.panic_concurrency > 0
        assert len(executor.started) >= 2
    finally:
        await service.stop()


async def test_demand_wakes_from_zero_at_once_and_missing_metrics_hold(nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    await ensure_streams(nc.jetstream(), subjects)
    await serve_deployments(nc, subjects, deployment(min_replicas=0))
    executor = RecordingExecutor()
    # A long tick: only the demand signal's wake-up can explain a quick start.
    service = AutoscalerService(nc, subjects, executor, POPS,
                                AutoscalerConfig(tick_s=30, scale=ScaleConfig(stable_window_s=5)))
    await service.start()
    try:
        await asyncio.sleep(0.5)
        assert executor.started == []
        t0 = time.monotonic()
        await signal_demand(nc, subjects, held_requests=1)
        while not executor.started:
            assert time.monotonic() - t0 < 2, "demand did not wake the deployment"
            await asyncio.sleep(0.02)

        class Broken:
            async def concurrency(self) -> dict[tuple[str, str], float]:
                raise MetricsUnavailable("Prometheus unreachable")

        service._source = Broken()
        decisions = await service.tick()
        assert service.metrics_ok is False
        assert executor.replicas, "a replica was stopped while metrics were missing"
        assert any("holding" in d.reason for d in decisions)
    finally:
        await service.stop()


async def started_autoscaler(nc: NATS, subjects: Subjects,
                             clock: Callable[[], float]) -> AutoscalerService:
    """A started autoscaler on a test clock with a 30 s tick: only signals drive it."""
    await ensure_streams(nc.jetstream(), subjects)
    service = AutoscalerService(nc, subjects, RecordingExecutor(), POPS,
                                AutoscalerConfig(tick_s=30), clock=SteppedClock(clock))
    await service.start()
    return service


async def activity_at(nc: NATS, subjects: Subjects, now: list[float],
                      served_at: Iterable[tuple[float, int]]) -> None:
    """The router's activity signals: `requests` served, at each test-clock time."""
    for at, requests in served_at:
        now[0] = at
        await signal_demand(nc, subjects, requests=requests)
        await asyncio.sleep(0.1)


async def test_activity_signals_teach_the_keep_alive_idle_times_and_request_counts(
        nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    await serve_deployments(nc, subjects, deployment(min_replicas=0))
    now = [1000.0]
    service = await started_autoscaler(nc, subjects, clock=lambda: now[0])
    try:
        # The router's activity signals: 5 requests, then 3 more 90 s later, then 4 after 20 s.
        await activity_at(nc, subjects, now, ((1000.0, 5), (1090.0, 3), (1110.0, 4)))
        history = service.learner.histogram(("dep_loop", "eu-west"))
        assert history is not None
        assert (history.requests, history.span_min, history.samples) == (12, 110 / 60, 1)
        assert history.counts[1] == 1  # the 90 s gap is one idle minute; 20 s is none
    finally:
        await service.stop()


async def test_a_restarted_autoscaler_resumes_the_keep_alive_it_had_learned(
        nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    await serve_deployments(nc, subjects, deployment(min_replicas=0))
    now = [1000.0]
    first = await started_autoscaler(nc, subjects, clock=lambda: now[0])
    # Every 10 minutes, 2 requests.
    await activity_at(nc, subjects, now, ((at, 2) for at in (1000.0, 1600.0, 2200.0, 2800.0)))
    learned = first.learner.histogram(("dep_loop", "eu-west"))
    assert learned is not None and learned.counts[10] == 3
    await first.stop()  # saves what it learned

    second = await started_autoscaler(nc, subjects, clock=lambda: 50.0)
    try:
        assert second.learner.histogram(("dep_loop", "eu-west")) == learned
        # The last request is as long ago as it was in wall time (just now), on the new clock.
        assert 49.0 < second.learner.last_request_at[("dep_loop", "eu-west")] <= 50.0
    finally:
        await second.stop()


async def test_deployment_updates_apply_as_they_arrive_and_a_gap_lists_again(
        nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    await ensure_streams(nc.jetstream(), subjects)
    asked = await serve_deployments(nc, subjects, msgspec.structs.replace(
        deployment(min_replicas=0), revision=4), as_of=4)
    executor = RecordingExecutor()
    service = AutoscalerService(nc, subjects, executor, POPS, AutoscalerConfig(tick_s=30))
    await service.start()

    async def updated(revision: int, min_replicas: int) -> None:
        await nc.publish(subjects.deployment_updated, encode(DeploymentUpdated(
            id=new_id(), source="test", time=datetime.now(UTC), tenant_id="ten_loop",
            deployment=msgspec.structs.replace(deployment(min_replicas), revision=revision))))
        await nc.flush()

    async def until(check: Callable[[], bool]) -> None:
        t0 = time.monotonic()
        while not check():
            assert time.monotonic() - t0 < 3, "the update was not applied"
            await asyncio.sleep(0.02)

    try:
        await until(lambda: len(asked) == 1)  # the list on start
        assert executor.started == []
        # The next change number: applied from the event itself (min 0 → 2), no list.
        await updated(5, min_replicas=2)
        await until(lambda: len(executor.started) == 2)
        assert len(asked) == 1
        assert service.catalog.get("dep_loop").min_replicas == 2  # type: ignore[union-attr]
        # Change 6 was never heard of: 7 still applies, and the gap makes it list again.
        await updated(7, min_replicas=3)
        await until(lambda: len(asked) == 2)
        assert service.catalog.last_change == 7 and not service.catalog.stale
    finally:
        await service.stop()
