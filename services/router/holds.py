"""Requests held while their deployment scales from zero: each waits for the deployment's
first ready heartbeat (or its own timeout), and they resume in arrival order."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from prometheus_client import Gauge

from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.clock import Clock


class Holds:
    def __init__(self, metrics: RouterMetrics, clock: Clock) -> None:
        self._metrics = metrics
        self._clock = clock
        self._waiting: dict[str, list[asyncio.Future[None]]] = defaultdict(list)

    def waiting(self, deployment_id: str) -> int:
        return len(self._waiting.get(deployment_id, ()))

    def release(self, deployment_id: str) -> None:
        """A replica is ready: futures resume in the order they were created."""
        for future in self._waiting.pop(deployment_id, []):
            if not future.done():
                future.set_result(None)

    async def wait(self, deployment_id: str, pop: str, timeout_s: float) -> float:
        """Wait for a ready replica (or the timeout); returns the seconds waited."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[deployment_id].append(future)
        try:
            waited = await counted_wait(future, timeout_s, self._metrics.held.labels(deployment_id, pop),
                                        self._clock)
        finally:
            waiters = self._waiting.get(deployment_id)
            if waiters and future in waiters:
                waiters.remove(future)
        self._metrics.cold_start_wait.labels(deployment_id).observe(waited)
        return waited


async def counted_wait(future: asyncio.Future[None], timeout_s: float, gauge: Gauge,
                       clock: Clock) -> float:
    """Wait for `future` (or the timeout), counted in `gauge` meanwhile; the seconds waited."""
    gauge.inc()
    t0 = clock.monotonic()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, timeout_s)
    finally:
        gauge.dec()
    return clock.monotonic() - t0
