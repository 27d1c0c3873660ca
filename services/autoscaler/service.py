"""The autoscaler: every tick, reads load, asks the pure policy (decide.py) per deployment ×
PoP, places the result within PoP capacity (placement.py), applies it with an executor,
and publishes each changed decision with its reason and inputs on
`<ns>.autoscaler.decision.<deployment>.<pop>` (kept a week in the `<NS>_DECISIONS` stream).

The router's demand signal wakes the loop at once, so a held request's deployment gets
its first replica within a tick; the router serves held requests on the first ready
heartbeat by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Gauge

from edgeinfer.services.autoscaler.catalog import Catalog
from edgeinfer.services.autoscaler.decide import (
    Decision,
    Inputs,
    Observation,
    PolicyState,
    ReplicaView,
    ScaleConfig,
    decide,
)
from edgeinfer.services.autoscaler.decisions import DecisionLog
from edgeinfer.services.autoscaler.executor import Replica, ReplicaExecutor
from edgeinfer.services.autoscaler.fleet import free_slots, replica_views, rollout_step
from edgeinfer.services.autoscaler.history import KeepAliveHistory
from edgeinfer.services.autoscaler.keepalive import KeepAliveConfig
from edgeinfer.services.autoscaler.learning import KeepAliveLearner
from edgeinfer.services.autoscaler.metrics import (
    ConcurrencySource,
    HeartbeatConcurrency,
    MetricsUnavailable,
    PrometheusConcurrency,
)
from edgeinfer.services.autoscaler.placement import place
from edgeinfer.shared.bus import decode_or_warn, request
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.config import ConfigError, env_float, env_int, env_optional, list_items
from edgeinfer.shared.events import (
    Deployment,
    ListDeploymentsReply,
    ScalingDecision,
    demand_decoder,
    deployment_updated_decoder,
    heartbeat_decoder,
)
from edgeinfer.shared.schedules import scheduled_min
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import Pop

log = logging.getLogger(__name__)

METRICS_DOWN = Gauge("edgeinfer_autoscaler_metrics_unavailable",
                     "1 while the load metrics cannot be read: decisions are held.")
DESIRED = Gauge("edgeinfer_autoscaler_desired_replicas", "Replicas the policy asks for.",
                ["deployment", "pop"])


@dataclass(frozen=True)
class AutoscalerConfig:
    tick_s: float = 1.0
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    keepalive: KeepAliveConfig = field(default_factory=KeepAliveConfig)
    prometheus_url: str | None = None
    runner_capacity: int = 8
    pop_capacity: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (pop, class)
    history_save_s: float = 30.0  # how often learned keep-alive history is saved, at most


def parse_pop_capacity(raw: str) -> dict[tuple[str, str], int]:
    """`EDGEINFER_POP_CAPACITY`, e.g. "eu-west:cpu=4,us-east:l40s=2" → GPU slots per PoP and class."""
    out: dict[tuple[str, str], int] = {}
    for item in list_items(raw):
        where, _, count = item.partition("=")
        pop, _, gpu_class = where.partition(":")
        if not pop or not gpu_class or not count.isdigit():
            raise ConfigError(f"EDGEINFER_POP_CAPACITY: {item!r} must be <pop>:<class>=<slots>")
        out[(pop, gpu_class)] = int(count)
    return out


def autoscaler_config_from_env(env: Mapping[str, str]) -> AutoscalerConfig:
    scale, keep = ScaleConfig(), KeepAliveConfig()
    fallback_s = env_float(env, "EDGEINFER_SCALE_TO_ZERO_AFTER_S", scale.fallback_keepalive_s,
                           lo=1, hi=7 * 86400)
    return AutoscalerConfig(
        tick_s=env_float(env, "EDGEINFER_AUTOSCALER_TICK_S", AutoscalerConfig.tick_s, lo=0.1, hi=60),
        scale=ScaleConfig(
            target_utilisation=env_float(env, "EDGEINFER_TARGET_UTILISATION",
                                         scale.target_utilisation, lo=0.05, hi=1),
            stable_window_s=env_float(env, "EDGEINFER_STABLE_WINDOW_S", scale.stable_window_s,
                                      lo=2, hi=3600),
            panic_window_s=env_float(env, "EDGEINFER_PANIC_WINDOW_S", scale.panic_window_s,
                                     lo=1, hi=600),
            fallback_keepalive_s=fallback_s,
            scale_down_delay_s=env_float(env, "EDGEINFER_SCALE_DOWN_DELAY_S",
                                         scale.scale_down_delay_s, lo=0, hi=86400)),
        keepalive=KeepAliveConfig(
            fixed_keepalive_min=max(1, round(fallback_s / 60)),
            cold_start_weight=env_float(env, "EDGEINFER_COLD_START_WEIGHT", keep.cold_start_weight,
                                        lo=0.1, hi=1e6),
            prior_idle_times=env_float(env, "EDGEINFER_KEEPALIVE_PRIOR", keep.prior_idle_times,
                                       lo=0, hi=1000)),
        prometheus_url=env_optional(env, "EDGEINFER_PROMETHEUS_URL"),
        runner_capacity=env_int(env, "EDGEINFER_RUNNER_CAPACITY", AutoscalerConfig.runner_capacity,
                                lo=1, hi=4096),
        pop_capacity=parse_pop_capacity(env.get("EDGEINFER_POP_CAPACITY", "")),
    )


def nearest_pops(pops: Mapping[str, Pop]) -> dict[str, list[str]]:
    """Other PoPs by nearness: same region, then same jurisdiction, then the rest."""
    return {name: sorted((o for o in pops if o != name), key=lambda o: (
        pops[o].region != pop.region, pops[o].jurisdiction != pop.jurisdiction, o))
        for name, pop in pops.items()}


class AutoscalerService:
    def __init__(self, nc: NATS, subjects: Subjects, executor: ReplicaExecutor,
                 pops: Mapping[str, Pop], config: AutoscalerConfig | None = None,
                 source: ConcurrencySource | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._nc = nc
        self._subjects = subjects
        self._executor = executor
        self._pops = dict(pops)
        self._nearest = nearest_pops(self._pops)
        self.config = config or AutoscalerConfig()
        self._clock = clock
        self.heartbeats = HeartbeatConcurrency(clock.monotonic)
        if source is not None:
            self._source: ConcurrencySource = source
        elif self.config.prometheus_url:
            self._source = PrometheusConcurrency(self.config.prometheus_url)
        else:
            self._source = self.heartbeats
        window_s = self.config.scale.stable_window_s
        self._observations: dict[tuple[str, str], deque[Observation]] = defaultdict(
            lambda: deque(maxlen=int(window_s / self.config.tick_s) + 4))
        self._states: dict[tuple[str, str], PolicyState] = {}
        self._demand_at: dict[tuple[str, str], float] = {}
        self.learner = KeepAliveLearner(
            self.config.keepalive, KeepAliveHistory(nc.jetstream(), subjects.keepalive_bucket), clock)
        self._saved_at = float("-inf")
        self.decisions = DecisionLog(nc, subjects, clock)
        self.catalog = Catalog()
        # A reconnect may have lost core-NATS updates: list again. None: never listed yet.
        self._reconnects: int | None = None
        self.metrics_ok = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self._subjects
        try:
            await self.learner.restore()
        except Exception as exc:  # better scaling on the fallback than no autoscaler
            log.warning("keep-alive history not restored (%s): learning it again", exc)
        await self._nc.subscribe(s.demand_wildcard, cb=self._on_demand)
        await self._nc.subscribe(s.heartbeat_wildcard, cb=self._on_heartbeat)
        await self._nc.subscribe(s.deployment_updated, cb=self._on_update)
        self._task = asyncio.create_task(self._loop(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):  # NATS gone: the last minute is relearned
            await self.learner.save()
        await self._executor.stop_all()

    # --- inputs ----------------------------------------------------------------------

    async def _on_demand(self, msg: Msg) -> None:
        signal = decode_or_warn(demand_decoder, msg)
        if signal is None:
            return
        now = self._clock.monotonic()
        self.heartbeats.observe_demand(signal)
        pops = [signal.pop] if signal.pop else self._allowed_pops(signal.deployment_id)
        for pop in pops or [""]:
            key = (signal.deployment_id, pop)
            if signal.held_requests > 0:
                self._demand_at[key] = now
            if signal.held_requests > 0 or signal.excess_concurrency > 0:
                self._wake.set()  # held or refused requests: act now, not at the next tick
            self.learner.note_requests(key, now, max(1, signal.requests))

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is not None:
            self.heartbeats.observe_heartbeat(beat)

    async def _on_update(self, msg: Msg) -> None:
        update = decode_or_warn(deployment_updated_decoder, msg)
        if update is not None:
            self.catalog.apply(update.deployment)
            self._wake.set()

    def _allowed_pops(self, deployment_id: str) -> list[str]:
        found = self.catalog.get(deployment_id)
        return list(found.allowed_pops) if found else []

    # --- the loop ----------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # registry briefly unreachable: hold, try next tick
                log.warning("autoscaler tick failed: %s", exc)
            if self._clock.monotonic() - self._saved_at >= self.config.history_save_s:
                self._saved_at = self._clock.monotonic()
                try:
                    await self.learner.save()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("keep-alive history not saved (%s); retrying later", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.tick_s)

    async def _list_if_stale(self) -> None:
        """The full list on start, after a skipped update and after a reconnect; otherwise
        the catalog follows `registry.deployment.updated` alone."""
        reconnects = self._nc.stats.get("reconnects", 0)
        if not self.catalog.stale and reconnects == self._reconnects:
            return
        reply = await request(self._nc, self._subjects.list_deployments, msgspec.Struct(),
                              ListDeploymentsReply, timeout=5.0)
        if self._reconnects is None:  # the first list: take over what a predecessor left
            await self._executor.adopt(reply.deployments)
        self.catalog.replace_all(reply.deployments, reply.as_of)
        self._reconnects = reconnects

    async def tick(self) -> list[ScalingDecision]:
        now = self._clock.monotonic()
        await self._list_if_stale()
        try:
            load = await self._source.concurrency()
            if not self.metrics_ok:
                log.warning("load metrics are back")
            self.metrics_ok = True
        except MetricsUnavailable as exc:
            if self.metrics_ok:
                log.error("load metrics unavailable, holding decisions: %s", exc)
            self.metrics_ok, load = False, {}
        METRICS_DOWN.set(0 if self.metrics_ok else 1)
        for replica in self._executor.exited():
            log.warning("runner %s exited; replacing it", replica.runner_id)
            await self._executor.stop(replica)
        published = []
        for deployment in self.catalog.deployments:
            published += await self._scale(deployment, load, now)
        return published

    def _inputs(self, d: Deployment, pop: str, replicas: list[ReplicaView], now: float) -> Inputs:
        key = (d.id, pop)
        prewarm_s, keepalive_s = self.learner.times(key)
        last = self.learner.last_request_at
        return Inputs(
            now=now, capacity=self.config.runner_capacity, min_replicas=d.min_replicas,
            max_replicas=d.max_replicas, replicas=replicas,
            observations=tuple(self._observations[key]),
            last_request_at=last.get(key, last.get((d.id, ""))),
            demand_at=max(self._demand_at.get(key, float("-inf")),
                          self._demand_at.get((d.id, ""), float("-inf"))),
            schedule_min=scheduled_min(d.schedules, pop, self._clock.now()),
            prewarm_s=prewarm_s, keepalive_s=keepalive_s, metrics_ok=self.metrics_ok)

    async def _scale(self, d: Deployment, load: dict[tuple[str, str], float],
                     now: float) -> list[ScalingDecision]:
        decisions: dict[str, tuple[Decision, Inputs]] = {}
        pairs: dict[str, list[tuple[Replica, ReplicaView]]] = {}
        for pop in d.allowed_pops:
            key = (d.id, pop)
            if self.metrics_ok:
                self._observations[key].append(Observation(now, load.get(key, 0.0)))
            pairs[pop] = replica_views(self._executor, self.heartbeats, d.id, pop)
            inputs = self._inputs(d, pop, [view for _, view in pairs[pop]], now)
            decision = decide(inputs, self._states.get(key, PolicyState()), self.config.scale)
            self._states[key] = decision.state
            decisions[pop] = (decision, inputs)
        return await self._apply(d, decisions, pairs)

    async def _apply(self, d: Deployment, decisions: dict[str, tuple[Decision, Inputs]],
                     pairs_by_pop: dict[str, list[tuple[Replica, ReplicaView]]]
                     ) -> list[ScalingDecision]:
        allowed = set(d.allowed_pops)
        placement = place({pop: dec.desired for pop, (dec, _) in decisions.items()},
                          {pop: len(pairs) for pop, pairs in pairs_by_pop.items()},
                          free_slots(self._executor, self.catalog.deployments,
                                     self.config.pop_capacity, d),
                          {pop: [o for o in self._nearest.get(pop, []) if o in allowed]
                           for pop in d.allowed_pops})
        published = []
        for pop, (decision, inputs) in decisions.items():
            target = placement.replicas[pop]
            DESIRED.labels(d.id, pop).set(decision.desired)
            pairs = pairs_by_pop[pop]
            rollout = await rollout_step(self._executor, d, pop, target, pairs)
            used_slots = {r.slot for r, _ in pairs}
            for _ in range(rollout.start):
                slot = min(set(range(len(pairs) + target + 1)) - used_slots)
                used_slots.add(slot)
                await self._executor.start(d, pop, slot)
            for replica in (r for r, _ in pairs if r.runner_id in rollout.stop):
                log.info("%s %s in %s: %s", "replace" if rollout.rolling else "scale down",
                         d.id, pop, decision.reason)
                await self._executor.stop(replica)  # drains in-flight requests first
            published.append(await self.decisions.publish(
                d, pop, decision, inputs, target, (rollout.start, rollout.stop),
                placement.spilled.get(pop, {}), self.metrics_ok, rollout))
        return [p for p in published if p is not None]
