"""Requests waiting for a slot while every allowed replica is full: queue, don't refuse.

A request that finds every replica of its deployment at capacity (or others already
waiting) takes a ticket and waits, first in first out, until a slot frees — a forward ends,
or a replica becomes ready — or its deadline passes; then it is refused (503 + Retry-After).
So does one that finds the queue full. A woken request that still finds no slot (a
replica went away) waits again in its old place: tickets keep arrival order.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections import defaultdict

from edgeinfer.services.router.holds import counted_wait
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.clock import Clock


class SlotQueue:
    def __init__(self, metrics: RouterMetrics, clock: Clock, max_waiting: int) -> None:
        self._metrics = metrics
        self._clock = clock
        self.max_waiting = max_waiting
        self._tickets = itertools.count()
        # Per deployment, (ticket, future) in ticket order: the oldest first.
        self._waiting: dict[str, list[tuple[int, asyncio.Future[None]]]] = defaultdict(list)

    def enter(self, deployment_id: str, now: float, timeout_s: float) -> tuple[int, float]:
        """A new waiter's (ticket, deadline): `now` when the queue is full (refused at once)."""
        full = self.waiting(deployment_id) >= self.max_waiting
        return next(self._tickets), now if full else now + timeout_s

    def waiting(self, deployment_id: str) -> int:
        waiters = self._waiting.get(deployment_id)
        return len(waiters) if waiters else 0

    def notify(self, deployment_id: str, slots: int = 1) -> None:
        """`slots` slots freed: wake that many of the oldest waiters not woken yet."""
        for _, future in self._waiting.get(deployment_id, ()):
            if slots <= 0:
                return
            if not future.done():
                future.set_result(None)
                slots -= 1

    async def wait(self, deployment_id: str, pop: str, ticket: int, timeout_s: float) -> float:
        """Wait in ticket order for a slot (or the timeout); returns the seconds waited."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiting[deployment_id]
        bisect.insort(waiters, (ticket, future), key=lambda waiter: waiter[0])
        try:
            waited = await counted_wait(future, timeout_s,
                                        self._metrics.queued.labels(deployment_id, pop), self._clock)
        finally:
            waiters.remove((ticket, future))
            if not waiters:
                self._waiting.pop(deployment_id, None)
        self._metrics.queue_wait.labels(deployment_id).observe(waited)
        return waited
