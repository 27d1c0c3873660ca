"""The runner's tie to the process that started it: a hard-killed supervisor must leave no
orphan runner behind (facts.md: BentoML workers outlive a process-group SIGKILL).

A SIGKILLed supervisor is a zombie until its parent reaps it, and an init that does not
reap (seen in this project's sandboxes) never does; `kill(pid, 0)` succeeds on a zombie, so
a runner checking only that would live on forever. A pid reused by a later process is told
apart by its start time (psutil.Process.is_running).
"""

from __future__ import annotations

import asyncio

import psutil

from edgeinfer.shared.processes import alive


async def until_gone(pid: int, interval_s: float = 1.0) -> None:
    """Return once process `pid` has exited (at once if there is no such process)."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while alive(process):
        await asyncio.sleep(interval_s)
