"""Adaptive batching: requests that arrive while the device is busy form the next batch.

No timer: an idle runner runs a lone request at once (no added latency), a busy one
batches exactly what queued up behind the running call — the batch grows with the load,
up to the model's `max_batch_units`. A long device call runs in a worker thread
(onnxruntime and torch release the GIL), so the event loop keeps accepting requests while
it runs; a call shorter than the hand-off to a thread costs (last batch under 1 ms) runs
inline. Only the model's `forward` is timed, by the device's timer; the batch's busy time
is split across its requests by their units (rows, tokens) with accounting.split_batch, so
the parts add up to the whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgeinfer.services.runner.accounting import ns_to_us, split_batch
from edgeinfer.services.runner.device import DeviceTimer
from edgeinfer.services.runner.models.base import ServedModel, Work
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPart:
    outputs: dict[str, Any]
    busy_us: int
    started_at: datetime
    ended_at: datetime
    batch_requests: int


@dataclass
class _Pending:
    work: Work
    request: Any
    future: asyncio.Future[tuple[BatchPart, Any]]


@dataclass(frozen=True)
class _Ran:
    outputs: list[dict[str, Any]]
    busy_ns: int
    started_at: datetime
    ended_at: datetime


class MicroBatcher:
    """`book(request, part)` charges a request's part and spools its usage event; it is
    called for every part, even when the client has gone away: the device did the work,
    and conservation (charged == busy × share) must hold. A part that `book` refuses (it
    raises) fails its own request only."""

    def __init__(self, model: ServedModel, timer: DeviceTimer,
                 book: Callable[[Any, BatchPart], Any], clock: Clock = SYSTEM_CLOCK) -> None:
        self._model = model
        self._clock = clock
        self._timer = timer
        self._book = book
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self._last_busy_ns = 0
        self.inline_below_ns = 1_000_000

    async def submit(self, work: Work, request: Any) -> tuple[BatchPart, Any]:
        """(the request's part of its batch, what `book` returned for it)."""
        future: asyncio.Future[tuple[BatchPart, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(work, request, future))
        return await future

    def _next_batch(self, first: _Pending) -> list[_Pending]:
        batch, units = [first], first.work.units
        waiting = self._queue._queue  # type: ignore[attr-defined]  # peek: asyncio.Queue has no API
        while waiting and units + waiting[0].work.units <= self._model.max_batch_units:
            item = self._queue.get_nowait()
            batch.append(item)
            units += item.work.units
        return batch

    async def run(self) -> None:
        while True:
            batch = self._next_batch(await self._queue.get())
            works = [p.work for p in batch]
            try:
                if self._last_busy_ns < self.inline_below_ns:
                    ran = self._run_batch(works)
                else:
                    ran = await asyncio.to_thread(self._run_batch, works)
            except Exception as exc:  # the model failed: every request in the batch hears it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batches += 1
            self._last_busy_ns = ran.busy_ns
            parts = split_batch(ns_to_us(ran.busy_ns), [w.units for w in works])
            for pending, outputs, busy_us in zip(batch, ran.outputs, parts, strict=True):
                part = BatchPart(outputs, busy_us, ran.started_at, ran.ended_at, len(batch))
                try:
                    booked = self._book(pending.request, part)
                except Exception as exc:  # unbooked (the spool failed): that request fails
                    log.exception("could not book a request's usage; failing the request")
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                    continue
                if not pending.future.done():
                    pending.future.set_result((part, booked))

    def _run_batch(self, works: list[Work]) -> _Ran:
        collated = self._model.collate(works)
        started = self._clock.now()
        output, busy_ns = self._timer.measure(self._model.forward, collated)
        ended = self._clock.now()
        return _Ran(self._model.split(output, works), busy_ns, started, ended)
