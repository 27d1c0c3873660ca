"""What the router tells the autoscaler on `<ns>.router.demand.<deployment>`: held requests
(wake a deployment at once), activity (requests served, at most once a second per PoP),
and queued and refused load (concurrency the replicas could not take)."""

from __future__ import annotations

import logging
from collections import defaultdict

import nats.errors
from nats.aio.client import Client as NATS

from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.events import DemandSignal, encode, new_id
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)


class DemandSignals:
    def __init__(self, nc: NATS, subjects: Subjects, metrics: RouterMetrics, clock: Clock) -> None:
        self._nc = nc
        self._subjects = subjects
        self._metrics = metrics
        self._clock = clock
        self._activity_sent: dict[tuple[str, str], float] = {}
        # Requests served since the last activity signal, per (deployment, PoP).
        self._served: dict[tuple[str, str], int] = defaultdict(int)
        # Refusals at capacity since the last report, and each deployment's mean time per
        # request (EWMA), to turn them into concurrency.
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}
        self._queued_sent: dict[tuple[str, str], float] = {}
        self._service_s: dict[str, float] = {}

    def observe_service_time(self, deployment_id: str, seconds: float) -> None:
        mean = self._service_s.get(deployment_id, seconds)
        self._service_s[deployment_id] = 0.8 * mean + 0.2 * seconds

    async def activity(self, deployment_id: str, pop: str, requests: int) -> None:
        """Tell the autoscaler the deployment is in use in this PoP, at most once a second:
        without it a deployment that scales to zero would be stopped while serving."""
        now = self._clock.monotonic()
        key = (deployment_id, pop)
        self._served[key] += requests
        if now - self._activity_sent.get(key, float("-inf")) >= 1.0:
            self._activity_sent[key] = now
            await self.publish(deployment_id, pop, held=0, served=self._served.pop(key))

    async def saturation(self, deployment_id: str, pop: str) -> None:
        """Requests refused because every replica was full are load the autoscaler cannot
        see in in-flight counts (they never got a slot). Report them at most once a second
        as the concurrency they would have added: refused per second × mean request time."""
        now = self._clock.monotonic()
        key = (deployment_id, pop)
        self._metrics.refused_seconds.labels(deployment_id, pop).inc(
            self._service_s.get(deployment_id, 0.1))
        since, refused = self._refused.get(key, (now, 0))
        refused += 1
        if now - since < 1.0:
            self._refused[key] = (since, refused)
            return
        self._refused[key] = (now, 0)
        excess = refused / max(now - since, 1.0) * self._service_s.get(deployment_id, 0.1)
        await self.publish(deployment_id, pop, held=0, excess=excess)

    async def queued(self, deployment_id: str, pop: str, waiting: int) -> None:
        """Requests waiting for a slot are concurrency the replicas cannot take now: their
        number, at most once a second, as the load the autoscaler adds replicas for."""
        now = self._clock.monotonic()
        key = (deployment_id, pop)
        if now - self._queued_sent.get(key, float("-inf")) >= 1.0:
            self._queued_sent[key] = now
            await self.publish(deployment_id, pop, held=0, excess=float(waiting))

    async def publish(self, deployment_id: str, pop: str, held: int, excess: float = 0.0,
                      served: int = 0) -> None:
        """Best effort: with NATS away the signal is lost, the request is not (the next
        signal, a second later, carries the load again)."""
        try:
            await self._nc.publish(self._subjects.demand(deployment_id), encode(DemandSignal(
                id=new_id(), source="router", time=self._clock.now(),
                deployment_id=deployment_id, held_requests=held, pop=pop,
                excess_concurrency=round(excess, 3), requests=served)))
        except (nats.errors.Error, OSError) as exc:
            log.debug("demand signal for %s not sent: %s", deployment_id, exc)
