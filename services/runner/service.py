"""The runner: a BentoML service that serves one deployment's model on one device share.

Started by an executor as `bentoml serve edgeinfer.services.runner.service:Runner` with its
assignment in the environment (runner/config.py). Per request it validates the input
before the device, measures the device-busy time of the model call, charges
busy × share (runner/accounting.py), spools the usage event to the outbox before it
answers, and lets the outbox publish it to JetStream.

The device is what the executor assigned (runner/device.py): a GPU named by
CUDA_VISIBLE_DEVICES, timed with CUDA events, or for the `cpu` class a CPU slot (one
thread), timed with the monotonic clock around the model call.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException, InvalidArgument

from edgeinfer.services.runner.accounting import Ledger
from edgeinfer.services.runner.answers import json_answer
from edgeinfer.services.runner.batcher import BatchPart, MicroBatcher
from edgeinfer.services.runner.booking import Bookkeeper
from edgeinfer.services.runner.config import RunnerConfig, runner_config_from_env
from edgeinfer.services.runner.device import Device, select_device, timer_for
from edgeinfer.services.runner.models import InvalidInput, ServedModel, load_model
from edgeinfer.services.runner.models.base import run_alone
from edgeinfer.services.runner.outbox import Outbox
from edgeinfer.services.runner.supervisor import until_gone
from edgeinfer.services.runner.traffic_timeout import install as install_releasing_timeout
from edgeinfer.services.runner.usage_lines import UsageLines
from edgeinfer.shared.artifacts import get_artifact
from edgeinfer.shared.bus import connect
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import (
    RunnerCounters,
    RunnerHeartbeat,
    RunnerState,
    UsageEvent,
    encode,
    new_id,
)
from edgeinfer.shared.hops import HEADER as HOP_HEADER
from edgeinfer.shared.hops import HopVerifier, InvalidHop, KeysUnavailable, kv_fetcher, now_ms
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tracing import trace_id_of

log = logging.getLogger("edgeinfer.runner")



class Unauthorized(BentoMLException):
    """No valid signed-hop token: nothing is done, spooled or charged."""

    error_code = HTTPStatus.UNAUTHORIZED

install_releasing_timeout()  # BentoML's own holds every request for 60 s (traffic_timeout.py)


class _RunnerMetrics:
    """The conservation counters on BentoML's /metrics (aggregated across workers).

    Created in the startup hook: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker after
    the service module is imported, and prometheus_client must see it first.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        # Seconds, Prometheus's base unit; the ledger keeps the exact integer microseconds
        # (a sum of floats here is exact to far below a microsecond).
        self.busy_s = Counter("edgeinfer_runner_busy_device_seconds",
                              "Device-busy time measured around model calls.")
        self.charged_s = Counter("edgeinfer_runner_charged_device_seconds",
                                 "Device time charged to tenants (busy × share).")
        self.requests = Counter("edgeinfer_runner_requests", "Requests that ran the model.")
        self.wall_share_s = Gauge("edgeinfer_runner_wall_share_seconds",
                                   "Wall time since ready × GPU share: the ceiling of busy time.",
                                   multiprocess_mode="livesum")
        self.in_flight = Gauge("edgeinfer_runner_in_flight_requests", "Requests in the model now.",
                               multiprocess_mode="livesum")
        self._synced = Ledger(share=Decimal(1))

    def sync(self, ledger: Ledger) -> None:
        """Bring the counters up to the ledger's totals. Called once per heartbeat, not per
        request: each multiprocess counter update is a file-backed write."""
        self.busy_s.inc((ledger.busy_us - self._synced.busy_us) / 1e6)
        self.charged_s.inc((ledger.charged_us - self._synced.charged_us) / 1e6)
        self.requests.inc(ledger.requests - self._synced.requests)
        self._synced = ledger


@bentoml.service(name="edgeinfer_runner", workers=1, traffic={"timeout": 60})
class Runner:
    # BentoML constructs the service itself: the clock is a class attribute to swap in tests.
    clock: Clock = SYSTEM_CLOCK

    def __init__(self) -> None:
        self.config: RunnerConfig = runner_config_from_env()
        self.subjects = Subjects(self.config.namespace)
        self.source = f"runner/{self.config.pop}/{self.config.runner_id}"  # CloudEvents source
        self.state: RunnerState = "starting"
        self._books: Bookkeeper | None = None  # from start(), once the spool is open
        self._unbooked = Ledger(share=self.config.gpu_share)
        self.in_flight = 0
        self.model: ServedModel | None = None
        self.device: Device | None = None
        self.started_ns = self.clock.monotonic_ns()
        self.ready_ns: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: Any = None
        self._outbox: Outbox | None = None
        self._metrics: _RunnerMetrics | None = None
        self._batcher: MicroBatcher | None = None
        self._hops: HopVerifier | None = None

    @bentoml.on_startup
    async def start(self) -> None:
        c = self.config
        self._metrics = _RunnerMetrics()
        self._nc = await connect(c.nats_url, name=f"runner-{c.runner_id}")
        js = self._nc.jetstream()
        artifacts = self._nc.jetstream(domain=c.artifact_domain) if c.artifact_domain else js
        data = await get_artifact(artifacts, self.subjects.artifact_bucket, c.artifact_digest,
                                  c.cache_dir)
        self.device = select_device(c.gpu_class, {"CUDA_VISIBLE_DEVICES": c.visible_devices})
        self.model = load_model(c.framework, data, self.device, c.cuda_graphs)
        warm = self.model.warm_input()
        for _ in range(5):  # warm-up is never charged
            run_alone(self.model, warm)
        now = self.clock.now()
        lines = UsageLines(UsageEvent(  # what every usage event of this runner shares
            id="", source=self.source, time=now, tenant_id="", request_id="",
            deployment_id=c.deployment_id, model_version=c.model_version, runner_id=c.runner_id,
            pop=c.pop, region=c.region, gpu_class=c.gpu_class, gpu_share=c.gpu_share, busy_us=0,
            gpu_us=0, started_at=now, ended_at=now))
        self._hops = HopVerifier(kv_fetcher(js, self.subjects.hop_keys_bucket))
        self._outbox = Outbox(c.spool_dir, js, self.subjects.usage(c.pop),
                              linger_s=c.outbox_linger_s, clock=self.clock)
        self._books = Bookkeeper(self._unbooked, lines, self._outbox)
        self._batcher = MicroBatcher(self.model, timer_for(self.device), self._book, clock=self.clock)
        self._tasks = [asyncio.create_task(self._outbox.run()),
                       asyncio.create_task(self._batcher.run()),
                       asyncio.create_task(self._heartbeats()),
                       asyncio.create_task(self._watch_supervisor())]
        # Everything loaded so far (BentoML, the model, NATS) lives as long as the process:
        # moved out of the cyclic collector's reach, a full collection walks only what
        # requests made since, instead of the whole ~260k-object heap (~100 ms on a 2-core VM).
        gc.collect()
        gc.freeze()
        self.state = "ready"
        self.ready_ns = self.clock.monotonic_ns()
        await self._beat()  # announce readiness at once, not a tick later
        log.info("runner %s ready in %s serving %s (%s %s) on %s", c.runner_id, c.pop,
                 c.deployment_id, c.framework, c.artifact_digest[:19], self.device.name)

    def __is_ready__(self) -> bool:
        return self.state == "ready"

    @bentoml.api(route="/infer")
    async def infer(self, inputs: list[Any], ctx: bentoml.Context) -> dict[str, Any]:
        """`inputs`: rows of numbers for ONNX models, texts for sentence-embedding models.
        Tenant, deployment and request id come from the router's signed token alone."""
        c = self.config
        if self.state != "ready" or self.model is None or self._batcher is None \
                or self._hops is None:
            raise bentoml.exceptions.ServiceUnavailable(f"runner is {self.state}")
        try:  # before anything is done or charged
            claims = await self._hops.verify(ctx.request.headers.get(HOP_HEADER),
                                             c.deployment_id, now_ms(self.clock))
        except InvalidHop as exc:
            raise Unauthorized(str(exc)) from None
        except KeysUnavailable as exc:  # the router sends it elsewhere, or holds it
            raise bentoml.exceptions.ServiceUnavailable(str(exc)) from None
        try:
            work = self.model.validate(inputs)
        except InvalidInput as exc:
            raise InvalidArgument(str(exc)) from None
        self.in_flight += 1
        try:
            part, (event_id, gpu_us) = await self._batcher.submit(work, (
                claims.tenant_id, claims.request_id, trace_id_of(ctx.request.headers.get("traceparent"))))
        finally:
            self.in_flight -= 1
        return json_answer({  # type: ignore[return-value]  # the same JSON object, ready
            "outputs": part.outputs,
            "usage": {"event_id": event_id, "gpu_us": gpu_us, "busy_us": part.busy_us,
                      "gpu_class": c.gpu_class, "pop": c.pop, "runner_id": c.runner_id,
                      "model_version": c.model_version, "batch_requests": part.batch_requests,
                      self.model.unit: work.units}})

    @bentoml.api(route="/drain")
    async def drain(self) -> dict[str, Any]:
        """Stop taking requests (they get 503, which routers retry elsewhere or hold), tell
        the routers at once with a draining heartbeat, and report what is still in flight:
        the executor calls this until nothing is, then stops the process. Stopping without
        it lets a router send to a runner whose server is already closing connections."""
        if self.state == "ready":
            self.state = "draining"
            with contextlib.suppress(Exception):
                await self._beat()
        return {"state": self.state, "in_flight": self.in_flight}

    @property
    def ledger(self) -> Ledger:
        return self._books.ledger if self._books is not None else self._unbooked

    def _book(self, request: tuple[str, str, str], part: BatchPart) -> tuple[str, int]:
        """Charge one request's part of a batch — (tenant, request id, trace id) — and spool
        its usage event before the answer (booking.py). Returns (event id, µs charged)."""
        assert self._books is not None
        return self._books.book(request[0], request[1], part.busy_us, part.started_at,
                                part.ended_at, request[2])

    def counters(self) -> RunnerCounters:
        if self.ready_ns is None:
            wall_share_us = 0
        else:
            wall_us = (self.clock.monotonic_ns() - self.ready_ns) // 1000
            wall_share_us = int(self.config.gpu_share * wall_us)
        return RunnerCounters(busy_us=self.ledger.busy_us, charged_us=self.ledger.charged_us,
                              wall_share_us=wall_share_us, requests=self.ledger.requests)

    async def _beat(self) -> None:
        c = self.config
        if self._metrics is not None:
            self._metrics.sync(self.ledger)
            self._metrics.wall_share_s.set(self.counters().wall_share_us / 1e6)
            self._metrics.in_flight.set(self.in_flight)
        beat = RunnerHeartbeat(
            id=new_id(), source=self.source, time=self.clock.now(),
            runner_id=c.runner_id, pop=c.pop, region=c.region, url=c.url, state=self.state,
            gpu_class=c.gpu_class, gpu_share=c.gpu_share,
            device=self.device.name if self.device else "unassigned", capacity=c.capacity,
            in_flight=self.in_flight, deployment_id=c.deployment_id, model_version=c.model_version,
            counters=self.counters())
        await self._nc.publish(self.subjects.heartbeat(c.pop, c.runner_id), encode(beat))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            with contextlib.suppress(Exception):  # NATS down: the next beat will try again
                await self._beat()

    async def _watch_supervisor(self) -> None:
        """Exit with the process that started us, so a hard-killed parent leaves no orphan."""
        pid = self.config.supervisor_pid
        if not pid:
            return
        await until_gone(pid)
        log.warning("supervisor %d is gone: stopping runner", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(os.getppid(), signal.SIGTERM)  # the BentoML arbiter

    @bentoml.on_shutdown
    async def stop(self) -> None:
        self.state = "draining"
        with contextlib.suppress(Exception):
            await self._beat()  # the router stops sending at once
        deadline = self.clock.monotonic() + self.config.drain_timeout_s
        while self.in_flight and self.clock.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._outbox is not None:
            flushed = await self._outbox.flush(timeout=max(0.0, deadline - self.clock.monotonic()))
            if not flushed:
                log.warning("usage outbox not fully published; the next start of this slot "
                            "publishes the rest from %s", self.config.spool_dir)
        for task in self._tasks:
            task.cancel()
        if self._outbox is not None:
            self._outbox.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
