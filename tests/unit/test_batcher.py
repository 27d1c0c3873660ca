"""The adaptive batcher: batches form from what queues while the device works, the parts
of a batch add up to its busy time (split by units), only the forward pass is timed, and
every part is booked even if its client left."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edgeinfer.services.runner.batcher import BatchPart, MicroBatcher
from edgeinfer.services.runner.device import MonotonicTimer
from edgeinfer.services.runner.models.base import Work


class FakeModel:
    """Rows of one number each; `forward` stands in for the device and may block."""

    framework = "fake"
    unit = "rows"

    def __init__(self, forward: Callable[[list[float]], list[float]], max_batch_units: int = 1024,
                 collate_s: float = 0.0) -> None:
        self._forward = forward
        self.max_batch_units = max_batch_units
        self._collate_s = collate_s

    def collate(self, batch: Sequence[Work]) -> list[float]:
        time.sleep(self._collate_s)  # host work: must not be charged
        return [x for w in batch for x in w.payload]

    def forward(self, rows: list[float]) -> list[float]:
        return self._forward(rows)

    def split(self, output: list[float], batch: Sequence[Work]) -> list[dict[str, Any]]:
        parts, offset = [], 0
        for w in batch:
            parts.append({"labels": output[offset:offset + w.units]})
            offset += w.units
        return parts


def rows(*values: float) -> Work:
    return Work(list(values), len(values))


def sleeping(seconds: float) -> Callable[[list[float]], list[float]]:
    def forward(batch: list[float]) -> list[float]:
        time.sleep(seconds)  # the device is busy; the event loop is not
        return batch

    return forward


async def test_requests_arriving_during_a_call_form_the_next_batch() -> None:
    booked: list[tuple[str, BatchPart]] = []
    batcher = MicroBatcher(FakeModel(sleeping(0.05)), MonotonicTimer(),
                           lambda req, part: booked.append((req, part)) or req)
    batcher.inline_below_ns = 0  # a long device call: always in a worker thread
    task = asyncio.create_task(batcher.run())
    try:
        first = asyncio.create_task(batcher.submit(rows(1.0), "a"))
        await asyncio.sleep(0.01)  # "a" is on the device now
        rest = [asyncio.create_task(batcher.submit(rows(*[float(i)] * i), f"r{i}"))
                for i in range(2, 5)]
        results = await asyncio.gather(first, *rest)
    finally:
        task.cancel()
    assert batcher.batches == 2
    assert [part.batch_requests for part, _ in results] == [1, 3, 3, 3]
    # Each request got its own rows back, in order.
    assert [part.outputs["labels"] for part, _ in results] == [[1.0], [2.0] * 2, [3.0] * 3,
                                                               [4.0] * 4]
    second_batch = [part.busy_us for part, _ in results[1:]]
    assert second_batch[0] * 4 // 2 - 2 <= second_batch[2] <= second_batch[0] * 4 // 2 + 2
    assert len(booked) == 4


async def test_a_batch_never_exceeds_the_models_unit_limit() -> None:
    batcher = MicroBatcher(FakeModel(sleeping(0.03), max_batch_units=5), MonotonicTimer(),
                           lambda req, part: req)
    batcher.inline_below_ns = 0
    task = asyncio.create_task(batcher.run())
    try:
        first = asyncio.create_task(batcher.submit(rows(0.0), "first"))
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit(rows(1.0, 2.0), f"q{i}")) for i in range(4)]
        results = await asyncio.gather(first, *queued)
    finally:
        task.cancel()
    # 4 requests of 2 rows behind the first: at most 5 rows a batch → batches of 2 requests.
    assert [part.batch_requests for part, _ in results] == [1, 2, 2, 2, 2]
    assert batcher.batches == 3


async def test_only_the_forward_pass_is_timed() -> None:
    parts: list[BatchPart] = []
    batcher = MicroBatcher(FakeModel(sleeping(0.01), collate_s=0.05), MonotonicTimer(),
                           lambda req, part: parts.append(part))
    task = asyncio.create_task(batcher.run())
    try:
        await batcher.submit(rows(1.0), "a")
    finally:
        task.cancel()
    (part,) = parts
    assert 10_000 <= part.busy_us < 40_000  # the 10 ms forward, not the 50 ms collate


async def test_a_client_that_leaves_is_still_booked() -> None:
    booked: list[str] = []
    gate = threading.Event()

    def forward(batch: list[float]) -> list[float]:
        gate.wait(5)
        return batch

    batcher = MicroBatcher(FakeModel(forward), MonotonicTimer(), lambda req, part: booked.append(req))
    batcher.inline_below_ns = 0
    task = asyncio.create_task(batcher.run())
    try:
        leaving = asyncio.create_task(batcher.submit(rows(1.0), "gone"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        gate.set()
        staying = await batcher.submit(rows(2.0), "stays")
    finally:
        task.cancel()
    assert booked == ["gone", "stays"]
    assert staying[0].outputs == {"labels": [2.0]}


async def test_a_failing_model_fails_every_request_of_its_batch_and_charges_nothing() -> None:
    booked: list[str] = []

    def broken(batch: list[float]) -> list[float]:
        raise RuntimeError("device fault")

    batcher = MicroBatcher(FakeModel(broken), MonotonicTimer(), lambda req, part: booked.append(req))
    task = asyncio.create_task(batcher.run())
    try:
        outcome = await asyncio.gather(batcher.submit(rows(1.0), "a"), return_exceptions=True)
    finally:
        task.cancel()
    assert isinstance(outcome[0], RuntimeError)
    assert booked == []


async def test_a_request_that_cannot_be_booked_fails_alone_and_the_batcher_goes_on() -> None:
    """`book` raising (the usage spool failed) fails that request, unanswered with usage
    that was never recorded; the rest of its batch and later batches are served."""

    def book(request: str, part: BatchPart) -> str:
        if request == "unbookable":
            raise OSError("No space left on device")
        return request

    batcher = MicroBatcher(FakeModel(sleeping(0.03)), MonotonicTimer(), book)
    batcher.inline_below_ns = 0
    task = asyncio.create_task(batcher.run())
    try:
        first = asyncio.create_task(batcher.submit(rows(1.0), "first"))
        await asyncio.sleep(0.01)  # the next two queue behind it: one batch
        outcome = await asyncio.gather(first, batcher.submit(rows(2.0), "unbookable"),
                                       batcher.submit(rows(3.0), "same batch"),
                                       return_exceptions=True)
        later = await batcher.submit(rows(4.0), "later")
    finally:
        task.cancel()
    assert isinstance(outcome[1], OSError)
    assert [o[1] for o in (outcome[0], outcome[2], later)] == ["first", "same batch", "later"]
    assert outcome[2][0].batch_requests == 2
