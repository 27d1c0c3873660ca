"""The autoscaler: gathers deployments and demand, asks the policy, applies it with an executor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.autoscaler.local import LocalProcessExecutor
from services.autoscaler.policy import Target, targets
from shared.bus import decode_or_warn, request
from shared.config import env_float
from shared.events import Deployment, ListDeploymentsReply, demand_decoder
from shared.subjects import Subjects

log = logging.getLogger(__name__)


class AutoscalerService:
    def __init__(self, nc: NATS, subjects: Subjects, executor: LocalProcessExecutor,
                 scale_to_zero_after_s: float | None = None) -> None:
        self._nc = nc
        self._subjects = subjects
        self._executor = executor
        self._scale_to_zero_after_s = (
            scale_to_zero_after_s if scale_to_zero_after_s is not None else
            env_float(os.environ, "EDGEINFER_SCALE_TO_ZERO_AFTER_S", 600.0, lo=1, hi=7 * 86400))
        # Re-check often enough that an idle deployment stops close to its deadline.
        self._interval_s = min(5.0, max(0.5, self._scale_to_zero_after_s / 4))
        self._demand_at: dict[tuple[str, str], float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._nc.subscribe(self._subjects.demand_wildcard, cb=self._on_demand)
        await self._nc.subscribe(self._subjects.deployment_updated, cb=self._on_update)
        self._task = asyncio.create_task(self._loop(), name="autoscaler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._executor.stop_all()

    async def _on_demand(self, msg: Msg) -> None:
        signal = decode_or_warn(demand_decoder, msg)
        if signal is None:
            return
        self._demand_at[(signal.deployment_id, signal.pop)] = time.monotonic()
        self._wake.set()

    async def _on_update(self, _: Msg) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # registry briefly unreachable: hold, try next tick
                log.warning("autoscaler reconcile failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)

    async def reconcile(self) -> None:
        reply = await request(self._nc, self._subjects.list_deployments, msgspec.Struct(),
                              ListDeploymentsReply, timeout=5.0)
        for target in targets(reply.deployments, self._demand_at, time.monotonic(),
                              self._scale_to_zero_after_s):
            await self._apply(target)

    async def _apply(self, target: Target) -> None:
        for replica in self._executor.exited():
            log.warning("runner %s exited; replacing it", replica.runner_id)
            await self._executor.stop(replica)
        running = [r for r in self._executor.running()
                   if r.deployment_id == target.deployment.id and r.pop == target.pop]
        deployment: Deployment = target.deployment
        used_slots = {r.slot for r in running}
        for _ in range(target.replicas - len(running)):
            slot = min(set(range(len(running) + target.replicas + 1)) - used_slots)
            used_slots.add(slot)
            await self._executor.start(deployment, target.pop, slot)
            log.info("scale up %s in %s: %s", deployment.id, target.pop, target.reason)
        for replica in sorted(running, key=lambda r: -r.slot)[: max(0, len(running) - target.replicas)]:
            log.info("scale down %s in %s: %s", deployment.id, target.pop, target.reason)
            await self._executor.stop(replica)
