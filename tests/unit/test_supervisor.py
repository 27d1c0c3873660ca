"""A runner stops when the process that started it is gone — a zombie included, since a
SIGKILLed supervisor stays one for good under an init that does not reap."""

from __future__ import annotations

import asyncio
import subprocess

import psutil
import pytest

from edgeinfer.services.runner.supervisor import alive, until_gone


def test_a_running_process_is_alive_and_a_killed_unreaped_one_is_not() -> None:
    child = subprocess.Popen(["sleep", "60"])
    process = psutil.Process(child.pid)
    try:
        assert alive(process)
        child.kill()
        for _ in range(200):  # dead within milliseconds; deliberately not reaped yet
            if process.status() == psutil.STATUS_ZOMBIE:
                break
            asyncio.run(asyncio.sleep(0.01))
        assert process.status() == psutil.STATUS_ZOMBIE
        assert not alive(process)  # kill(pid, 0) would still succeed here
    finally:
        child.kill()
        child.wait()
    assert not alive(process)  # reaped: gone


async def test_until_gone_waits_for_the_supervisor_and_returns_when_it_dies() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        watcher = asyncio.create_task(until_gone(child.pid, interval_s=0.01))
        await asyncio.sleep(0.2)
        assert not watcher.done()  # alive: keeps watching
        child.kill()  # not reaped: a zombie, as under an init that does not reap
        await asyncio.wait_for(watcher, 5)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("pid", [2**22 + 12345])  # above the default pid_max: never a process
async def test_until_gone_returns_at_once_without_such_a_process(pid: int) -> None:
    await asyncio.wait_for(until_gone(pid, interval_s=10), 1)
