"""Delivery confirmations: which answers this router handed to their clients.

A runner charges a request when it has served it; the tenant is billed for it only once a
router confirms that the answer reached the client (docs/billing.md, "Only what was
delivered"). Confirmations are batched — the request ids gathered over `flush_s`, in one
JetStream message on `<ns>.usage.delivered.<pop>` — so the hot path only appends to a list.

What a router crash can leave unbilled is bounded: the ids not yet flushed (at most
`flush_s` of traffic) and the requests in flight. Their GPU time stays in the ledger,
marked `undelivered`; never billed, never lost. While NATS is away the ids wait here, up to
`max_pending`; beyond that the oldest are dropped (and counted), which can only under-bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.js import JetStreamContext

from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.events import Deliveries, batch_id, encode

log = logging.getLogger(__name__)


class DeliveryConfirmations:
    def __init__(self, js: JetStreamContext, subject: str, metrics: RouterMetrics, clock: Clock,
                 flush_s: float, max_batch: int = 5000, max_pending: int = 500_000) -> None:
        self._js = js
        self._subject = subject
        self._metrics = metrics
        self._clock = clock
        self._flush_s = flush_s
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._pending: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def delivered(self, request_id: str) -> None:
        """The answer was written to the client's connection (the response's background
        task). Async on purpose: Litestar runs a plain function in a thread."""
        self._pending.append(request_id)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-confirmations")

    async def stop(self) -> None:
        """Flush what is pending (a graceful stop loses no confirmation), then end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=5)
        if self._pending:
            log.warning("%d delivery confirmations not sent at stop: that GPU time stays"
                        " unbilled (marked undelivered)", len(self._pending))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("delivery confirmations not sent yet (%d waiting): %s",
                            len(self._pending), exc)
                self._shed()

    async def flush(self) -> None:
        """Publish the pending ids in batches; each batch leaves the list only once
        JetStream has stored it."""
        while self._pending:
            ids = self._pending[:self._max_batch]
            encoded = [i.encode() for i in ids]
            message_id = batch_id(encoded)
            await self._js.publish(self._subject, encode(Deliveries(
                id=message_id, source="router", time=self._clock.now(), request_ids=ids)),
                headers={"Nats-Msg-Id": message_id})
            del self._pending[:len(ids)]
            self._metrics.confirmations.inc(len(ids))

    def _shed(self) -> None:
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            del self._pending[:excess]
            self._metrics.confirmations_dropped.inc(excess)
            log.error("dropped %d delivery confirmations (NATS away too long): that GPU time"
                      " will show as undelivered and is not billed", excess)
