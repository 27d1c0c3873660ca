"""The adaptive batcher: batches form from what queues while the device works, the parts
of a batch add up to its busy time, and every part is booked even if its client left."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from services.runner.batcher import BatchPart, MicroBatcher


def slow_model(seconds: float):
    def run(array: np.ndarray) -> dict[str, list[float]]:
        time.sleep(seconds)  # the device is busy; the event loop is not
        return {"labels": array[:, 0].tolist()}

    return run


async def test_requests_arriving_during_a_call_form_the_next_batch() -> None:
    booked: list[tuple[str, BatchPart]] = []
    batcher = MicroBatcher(slow_model(0.05), lambda req, part: booked.append((req, part)) or req)
    batcher.inline_below_ns = 0  # a long device call: always in a worker thread
    task = asyncio.create_task(batcher.run())
    try:
        first = asyncio.create_task(batcher.submit(np.array([[1.0]]), "a"))
        await asyncio.sleep(0.01)  # "a" is on the device now
        rest = [asyncio.create_task(batcher.submit(np.array([[float(i)]] * i), f"r{i}"))
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


async def test_a_client_that_leaves_is_still_booked() -> None:
    booked: list[str] = []
    gate = threading.Event()

    def run(array: np.ndarray) -> dict[str, list[float]]:
        gate.wait(5)
        return {"labels": array[:, 0].tolist()}

    batcher = MicroBatcher(run, lambda req, part: booked.append(req))
    batcher.inline_below_ns = 0
    task = asyncio.create_task(batcher.run())
    try:
        leaving = asyncio.create_task(batcher.submit(np.array([[1.0]]), "gone"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        gate.set()
        staying = await batcher.submit(np.array([[2.0]]), "stays")
    finally:
        task.cancel()
    assert booked == ["gone", "stays"]
    assert staying[0].outputs == {"labels": [2.0]}
