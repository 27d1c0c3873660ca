"""Asyncio helpers."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into a timeout.

    On Python 3.11, `asyncio.wait_for` (which nats-py's `fetch` uses) can report a
    cancellation that races with its timeout as a TimeoutError; a loop that treats
    timeouts as "try again" would then never stop. Call this after catching a timeout.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
