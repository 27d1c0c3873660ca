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
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Gauge

from services.autoscaler.decide import (
    Decision,
    Inputs,
    Observation,
    PolicyState,
    ReplicaView,
    ScaleConfig,
    decide,
)
from services.autoscaler.executor import Replica, ReplicaExecutor
from services.autoscaler.history import KeepAliveHistory, KeepAliveRecord
from services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, learned_times
from services.autoscaler.metrics import (
    ConcurrencySource,
    HeartbeatConcurrency,
    MetricsUnavailable,
    PrometheusConcurrency,
)
from services.autoscaler.placement import place
from shared.bus import decode_or_warn, request
from shared.config import ConfigError, env_float, env_int, env_optional, list_items
from shared.events import (
    Deployment,
    ListDeploymentsReply,
    ScalingDecision,
    demand_decoder,
    encode,
    heartbeat_decoder,
    new_id,
)
from shared.schedules import scheduled_min
from shared.subjects import Subjects
from shared.topology import Pop

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
    deployments_refresh_s: float = 30.0
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


def autoscaler_config_from_env(env: Mapping[str, str] | None = None) -> AutoscalerConfig:
    env = os.environ if env is None else env
    fallback_s = env_float(env, "EDGEINFER_SCALE_TO_ZERO_AFTER_S", 600.0, lo=1, hi=7 * 86400)
    return AutoscalerConfig(
        tick_s=env_float(env, "EDGEINFER_AUTOSCALER_TICK_S", 1.0, lo=0.1, hi=60),
        scale=ScaleConfig(
            target_utilisation=env_float(env, "EDGEINFER_TARGET_UTILISATION", 0.7, lo=0.05, hi=1),
            stable_window_s=env_float(env, "EDGEINFER_STABLE_WINDOW_S", 60.0, lo=2, hi=3600),
            panic_window_s=env_float(env, "EDGEINFER_PANIC_WINDOW_S", 6.0, lo=1, hi=600),
            fallback_keepalive_s=fallback_s,
            scale_down_delay_s=env_float(env, "EDGEINFER_SCALE_DOWN_DELAY_S", 0.0, lo=0,
                                         hi=86400)),
        keepalive=KeepAliveConfig(
            fixed_keepalive_min=max(1, round(fallback_s / 60)),
            cold_start_weight=env_float(env, "EDGEINFER_COLD_START_WEIGHT", 8.0, lo=0.1, hi=1e6),
            prior_idle_times=env_float(env, "EDGEINFER_KEEPALIVE_PRIOR", 1.0, lo=0, hi=1000)),
        prometheus_url=env_optional(env, "EDGEINFER_PROMETHEUS_URL"),
        runner_capacity=env_int(env, "EDGEINFER_RUNNER_CAPACITY", 8, lo=1, hi=4096),
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
                 source: ConcurrencySource | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._subjects = subjects
        self._executor = executor
        self._pops = dict(pops)
        self._nearest = nearest_pops(self._pops)
        self.config = config or autoscaler_config_from_env()
        self._clock = clock
        self.heartbeats = HeartbeatConcurrency(clock)
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
        self._last_request_at: dict[tuple[str, str], float] = {}
        self._idle: dict[tuple[str, str], IdleHistogram] = {}
        # The window each histogram gives, worked out once per change, not on every tick.
        self._learned: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._history = KeepAliveHistory(nc.jetstream(), subjects.keepalive_bucket)
        self._unsaved: set[tuple[str, str]] = set()
        self._saved_at = float("-inf")
        self._published: dict[tuple[str, str], tuple[object, ...]] = {}
        self._deployments: list[Deployment] = []
        self._deployments_at = float("-inf")
        self.metrics_ok = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self._subjects
        try:
            await self._restore_history()
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
            await self._save_history()
        await self._executor.stop_all()

    # --- inputs ----------------------------------------------------------------------

    async def _on_demand(self, msg: Msg) -> None:
        signal = decode_or_warn(demand_decoder, msg)
        if signal is None:
            return
        now = self._clock()
        self.heartbeats.observe_demand(signal)
        pops = [signal.pop] if signal.pop else [p for (d, p) in self._known_keys(signal.deployment_id)]
        for pop in pops or [""]:
            key = (signal.deployment_id, pop)
            if signal.held_requests > 0:
                self._demand_at[key] = now
            if signal.held_requests > 0 or signal.excess_concurrency > 0:
                self._wake.set()  # held or refused requests: act now, not at the next tick
            self._note_requests(key, now, max(1, signal.requests))

    def _note_requests(self, key: tuple[str, str], now: float, requests: int) -> None:
        """Activity arrives at most once a second; it teaches the deployment's keep-alive
        (keepalive.py) its idle times (gaps of a minute or more) and request rate."""
        last = self._last_request_at.get(key)
        histogram = self._idle.get(key) or IdleHistogram.empty(self.config.keepalive)
        self._set_history(key, histogram.record(0.0 if last is None else (now - last) / 60,
                                                requests))
        self._last_request_at[key] = now
        self._unsaved.add(key)

    async def _restore_history(self) -> None:
        """Resume the keep-alive from what an earlier autoscaler learned (history.py)."""
        await self._history.open()
        now, wall = self._clock(), time.time()
        for key, record in (await self._history.load()).items():
            self._set_history(key, record.histogram(self.config.keepalive))
            self._last_request_at[key] = now - max(0.0, wall - record.last_request_wall)
        if self._idle:
            log.info("keep-alive history restored for %d deployment × PoP pairs", len(self._idle))

    async def _save_history(self) -> None:
        # The last request in wall time, from its age on the monotonic clock.
        wall_minus_clock = time.time() - self._clock()
        for key in list(self._unsaved):
            self._unsaved.discard(key)
            record = KeepAliveRecord.of(self._idle[key],
                                        self._last_request_at[key] + wall_minus_clock)
            try:
                await self._history.save(*key, record)
            except Exception:
                self._unsaved.add(key)  # try again next time
                raise

    def _set_history(self, key: tuple[str, str], histogram: IdleHistogram) -> None:
        self._idle[key] = histogram
        self._learned.pop(key, None)

    def _learned_times(self, key: tuple[str, str]) -> tuple[float, float | None]:
        if key not in self._learned:
            self._learned[key] = learned_times(self._idle.get(key), self.config.keepalive)
        return self._learned[key]

    def idle_history(self, deployment_id: str, pop: str) -> IdleHistogram | None:
        """What the keep-alive has learned for (deployment, PoP) so far."""
        return self._idle.get((deployment_id, pop))

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is not None:
            self.heartbeats.observe_heartbeat(beat)

    async def _on_update(self, _: Msg) -> None:
        self._deployments_at = float("-inf")
        self._wake.set()

    def _known_keys(self, deployment_id: str) -> list[tuple[str, str]]:
        return [(d.id, p) for d in self._deployments if d.id == deployment_id for p in d.allowed_pops]

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
            if self._clock() - self._saved_at >= self.config.history_save_s:
                self._saved_at = self._clock()
                try:
                    await self._save_history()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("keep-alive history not saved (%s); retrying later", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.tick_s)

    async def tick(self) -> list[ScalingDecision]:
        now = self._clock()
        if now - self._deployments_at > self.config.deployments_refresh_s:
            reply = await request(self._nc, self._subjects.list_deployments, msgspec.Struct(),
                                  ListDeploymentsReply, timeout=5.0)
            self._deployments, self._deployments_at = reply.deployments, now
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
        for deployment in self._deployments:
            published += await self._scale(deployment, load, now)
        return published

    def _replicas(self, deployment_id: str, pop: str) -> list[tuple[Replica, ReplicaView]]:
        """The executor's replicas with their state from heartbeats: by runner id where the
        executor knows it (local processes), else paired with the PoP's other fresh beats
        (Kubernetes pods report their pod name). No beat yet: starting."""
        mine = [r for r in self._executor.running()
                if r.deployment_id == deployment_id and r.pop == pop]
        beats = self.heartbeats.fresh(deployment_id, pop)
        spare = [b for rid, b in sorted(beats.items()) if rid not in {r.runner_id for r in mine}]
        out = []
        for r in mine:
            beat = beats.get(r.runner_id) or (spare.pop(0) if spare else None)
            state = beat.state if beat is not None else "starting"
            out.append((r, ReplicaView(r.runner_id, state, beat.in_flight if beat else 0)))
        return out

    async def _scale(self, d: Deployment, load: dict[tuple[str, str], float],
                     now: float) -> list[ScalingDecision]:
        wall = datetime.now(UTC)
        decisions: dict[str, tuple[Decision, Inputs]] = {}
        pairs: dict[str, list[tuple[Replica, ReplicaView]]] = {}
        for pop in d.allowed_pops:
            key = (d.id, pop)
            if self.metrics_ok:
                self._observations[key].append(Observation(now, load.get(key, 0.0)))
            pairs[pop] = self._replicas(d.id, pop)
            replicas = [view for _, view in pairs[pop]]
            prewarm_s, keepalive_s = self._learned_times(key)
            inputs = Inputs(
                now=now, capacity=self.config.runner_capacity, min_replicas=d.min_replicas,
                max_replicas=d.max_replicas, replicas=replicas,
                observations=tuple(self._observations[key]),
                last_request_at=self._last_request_at.get(key, self._last_request_at.get((d.id, ""))),
                demand_at=max(self._demand_at.get(key, float("-inf")),
                              self._demand_at.get((d.id, ""), float("-inf"))),
                schedule_min=scheduled_min(d.schedules, pop, wall),
                prewarm_s=prewarm_s, keepalive_s=keepalive_s)
            decision = decide(inputs, self._states.get(key, PolicyState()), self.config.scale)
            if not self.metrics_ok:
                # Hold: never scale down blind; only a held request may still wake a PoP.
                live = sum(v.state != "draining" for v in replicas)
                demand_at = inputs.demand_at or float("-inf")
                wake = 1 if now - demand_at < self.config.scale.stable_window_s else 0
                decision = Decision(max(live, wake), max(0, wake - live), (),
                                    "load metrics unavailable: holding", decision.state)
            else:
                self._states[key] = decision.state
            decisions[pop] = (decision, inputs)
        return await self._apply(d, decisions, pairs)

    async def _apply(self, d: Deployment, decisions: dict[str, tuple[Decision, Inputs]],
                     pairs_by_pop: dict[str, list[tuple[Replica, ReplicaView]]]
                     ) -> list[ScalingDecision]:
        running = {pop: len(pairs) for pop, pairs in pairs_by_pop.items()}
        classes = {dep.id: dep.gpu_class for dep in self._deployments}
        free: dict[str, int | None] = {}
        for pop in d.allowed_pops:
            slots = self.config.pop_capacity.get((pop, d.gpu_class))
            if slots is None:
                free[pop] = None
                continue
            used = sum(1 for r in self._executor.running() if r.pop == pop
                       and classes.get(r.deployment_id) == d.gpu_class and r.deployment_id != d.id)
            free[pop] = max(0, slots - used)
        allowed = set(d.allowed_pops)
        placement = place({pop: dec.desired for pop, (dec, _) in decisions.items()}, running, free,
                          {pop: [o for o in self._nearest.get(pop, []) if o in allowed]
                           for pop in d.allowed_pops})
        published = []
        for pop, (decision, inputs) in decisions.items():
            target = placement.replicas[pop]
            DESIRED.labels(d.id, pop).set(decision.desired)
            pairs = pairs_by_pop[pop]
            live = [r for r, v in pairs if v.state != "draining"]
            used_slots = {r.slot for r, _ in pairs}
            for _ in range(max(0, target - len(live))):
                slot = min(set(range(len(pairs) + target + 1)) - used_slots)
                used_slots.add(slot)
                await self._executor.start(d, pop, slot)
            excess = len(live) - target
            idle_ready = [r for r, v in pairs if r.runner_id in decision.stop or
                          (v.state == "ready" and v.in_flight == 0)]
            for replica in idle_ready[:max(0, excess)]:
                log.info("scale down %s in %s: %s", d.id, pop, decision.reason)
                await self._executor.stop(replica)  # drains in-flight requests first
            spilled = placement.spilled.get(pop, {})
            published.append(await self._publish(d, pop, decision, inputs, target, spilled))
        return [p for p in published if p is not None]

    async def _publish(self, d: Deployment, pop: str, decision: Decision, inputs: Inputs,
                       target: int, spilled: dict[str, int]) -> ScalingDecision | None:
        reason = decision.reason.split(":")[0]
        fingerprint = (decision.desired, target, reason, self.metrics_ok, tuple(spilled.items()))
        if self._published.get((d.id, pop)) == fingerprint:
            return None
        self._published[(d.id, pop)] = fingerprint
        ready = sum(r.state == "ready" for r in inputs.replicas)
        event = ScalingDecision(
            id=new_id(), source="autoscaler", time=datetime.now(UTC), deployment_id=d.id,
            pop=pop, desired=decision.desired, start=max(0, target - ready), stop=list(decision.stop),
            reason=decision.reason + (f"; {sum(spilled.values())} placed in "
                                      f"{', '.join(spilled)} (PoP full)" if spilled else ""),
            ready=ready, starting=sum(r.state == "starting" for r in inputs.replicas),
            stable_concurrency=round(decision.stable_concurrency, 3),
            panic_concurrency=round(decision.panic_concurrency, 3),
            schedule_min=inputs.schedule_min, keepalive_s=inputs.keepalive_s,
            metrics_ok=self.metrics_ok, placed_in=",".join(spilled))
        log.info("%s in %s: %d replica(s) — %s", d.id, pop, decision.desired, event.reason)
        with contextlib.suppress(Exception):  # NATS down: the next change publishes again
            await self._nc.jetstream().publish(self._subjects.decision(d.id, pop), encode(event))
        return event
