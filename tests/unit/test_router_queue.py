"""Requests waiting for a slot (services/router/queue.py) and for a cold start
(services/router/holds.py) are served in arrival order."""

from __future__ import annotations

import asyncio

from edgeinfer.services.router.holds import Holds
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.services.router.queue import SlotQueue
from edgeinfer.shared.clock import SYSTEM_CLOCK


async def test_queued_requests_get_freed_slots_in_arrival_order() -> None:
    queue = SlotQueue(RouterMetrics(), SYSTEM_CLOCK, max_waiting=10)
    served: list[int] = []

    async def request(n: int) -> None:
        ticket, deadline = queue.enter("dep", 0.0, 5.0)
        await queue.wait("dep", "eu-west", ticket, deadline)
        served.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(request(n)))
        await asyncio.sleep(0)  # each arrives after the one before
    await asyncio.sleep(0.01)
    assert queue.waiting("dep") == 5 and served == []
    for _ in range(5):  # one slot frees at a time
        queue.notify("dep")
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2, 3, 4] and queue.waiting("dep") == 0


async def test_a_woken_request_that_finds_no_slot_keeps_its_place() -> None:
    queue = SlotQueue(RouterMetrics(), SYSTEM_CLOCK, max_waiting=10)
    first, _ = queue.enter("dep", 0.0, 5.0)
    second, _ = queue.enter("dep", 0.0, 5.0)
    woken: list[int] = []

    async def wait(ticket: int) -> None:
        await queue.wait("dep", "eu-west", ticket, 5.0)
        woken.append(ticket)

    later = asyncio.create_task(wait(second))
    earlier = asyncio.create_task(wait(first))  # re-waits, after a later ticket queued
    await asyncio.sleep(0.01)
    queue.notify("dep")
    await asyncio.sleep(0.01)
    assert woken == [first]
    queue.notify("dep")
    await asyncio.gather(later, earlier)
    assert woken == [first, second]


async def test_a_full_queue_refuses_at_once_and_a_wait_ends_at_its_deadline() -> None:
    queue = SlotQueue(RouterMetrics(), SYSTEM_CLOCK, max_waiting=1)
    ticket, deadline = queue.enter("dep", 100.0, 0.05)
    assert deadline == 100.05
    waiting = asyncio.create_task(queue.wait("dep", "eu-west", ticket, 0.05))
    await asyncio.sleep(0.01)
    assert queue.enter("dep", 100.0, 5.0)[1] == 100.0  # full: its deadline is now
    assert 0.04 < await waiting < 1.0  # nobody freed a slot: the wait timed out
    assert queue.waiting("dep") == 0


async def test_held_requests_resume_in_arrival_order() -> None:
    holds = Holds(RouterMetrics(), SYSTEM_CLOCK)
    resumed: list[int] = []

    async def held(n: int) -> None:
        await holds.wait("dep", "eu-west", 5.0)
        resumed.append(n)

    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(held(n)))
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    holds.release("dep")  # the first replica is ready
    await asyncio.gather(*tasks)
    assert resumed == [0, 1, 2, 3, 4]
