"""Adaptive batching: requests that arrive while the device is busy form the next batch.

No timer: an idle runner runs a lone request at once (no added latency), a busy one
batches exactly what queued up behind the running call — the batch grows with the load.
A long device call runs in a worker thread (onnxruntime, like CUDA, releases the GIL), so
the event loop keeps accepting requests while it runs; a call shorter than the hand-off
to a thread costs (last batch under 1 ms) runs inline. A batch's measured busy time is split
across its requests by rows (accounting.split_batch): the parts add up to the whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from services.runner.accounting import ns_to_us, split_batch


@dataclass(frozen=True)
class BatchPart:
    outputs: dict[str, list[Any]]
    busy_us: int
    started_at: datetime
    ended_at: datetime
    batch_requests: int


@dataclass
class _Pending:
    array: np.ndarray
    request: Any
    future: asyncio.Future[tuple[BatchPart, Any]]


class MicroBatcher:
    """`book(request, part)` charges a request's part and spools its usage event; it is
    called for every part, even when the client has gone away: the device did the work,
    and conservation (charged == busy × share) must hold."""

    def __init__(self, run: Callable[[np.ndarray], dict[str, list[Any]]],
                 book: Callable[[Any, BatchPart], Any], max_rows: int = 1024) -> None:
        self._run = run
        self._book = book
        self._max_rows = max_rows
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self._last_busy_ns = 0
        self.inline_below_ns = 1_000_000

    async def submit(self, array: np.ndarray, request: Any) -> tuple[BatchPart, Any]:
        """(the request's part of its batch, what `book` returned for it)."""
        future: asyncio.Future[tuple[BatchPart, Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(array, request, future))
        return await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            rows = len(batch[0].array)
            while not self._queue.empty() and rows + len(self._queue._queue[0].array) <= self._max_rows:  # type: ignore[attr-defined]
                item = self._queue.get_nowait()
                batch.append(item)
                rows += len(item.array)
            array = batch[0].array if len(batch) == 1 else np.concatenate([p.array for p in batch])
            try:
                if self._last_busy_ns < self.inline_below_ns:
                    outputs, busy_ns, started, ended = self._timed(array)
                else:
                    outputs, busy_ns, started, ended = await asyncio.to_thread(self._timed, array)
            except Exception as exc:  # the model failed: every request in the batch hears it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batches += 1
            self._last_busy_ns = busy_ns
            parts = split_batch(ns_to_us(busy_ns), [len(p.array) for p in batch])
            offset = 0
            for pending, busy_us in zip(batch, parts, strict=True):
                n = len(pending.array)
                sliced = {k: v[offset:offset + n] for k, v in outputs.items()}
                offset += n
                part = BatchPart(sliced, busy_us, started, ended, len(batch))
                booked = self._book(pending.request, part)
                if not pending.future.done():
                    pending.future.set_result((part, booked))

    def _timed(self, array: np.ndarray) -> tuple[dict[str, list[Any]], int, datetime, datetime]:
        started = datetime.now(UTC)
        t0 = time.perf_counter_ns()
        outputs = self._run(array)
        busy_ns = time.perf_counter_ns() - t0
        return outputs, busy_ns, started, datetime.now(UTC)
