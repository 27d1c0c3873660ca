"""`edgeinfer up`'s supervisor on real child processes: a dead child is restarted and
counted, a crash-looping one backs off, and stop stops them all."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import psutil
import pytest

from edgeinfer.services.launcher.supervisor import (
    MAX_BACKOFF_S,
    Child,
    Supervisor,
    restart_delay,
)

# Says it is ready the way `edgeinfer run` does, then lives (or dies at once).
READY_THEN = ("import os, sys, time; "
              "open(os.environ['EDGEINFER_READY_FILE'], 'w').write(str(os.getpid())); {}")


def child(tmp_path: Path, name: str, then: str) -> Child:
    return Child(name, [sys.executable, "-c", READY_THEN.format(then)], tmp_path / f"{name}.ready")


def test_the_backoff_starts_at_zero_doubles_and_is_capped() -> None:
    assert [restart_delay(n) for n in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == MAX_BACKOFF_S


async def test_a_killed_child_is_restarted_at_once_and_counted(tmp_path: Path) -> None:
    steady = child(tmp_path, "steady", "time.sleep(60)")
    other = child(tmp_path, "other", "time.sleep(60)")
    supervisor = Supervisor([steady, other], env={}, status_file=tmp_path / "status.json")
    await supervisor.start_all(timeout_s=30)
    watch = asyncio.create_task(supervisor.watch())
    try:
        first, other_pid = steady.pid, other.pid
        assert first is not None
        psutil.Process(first).kill()
        for _ in range(200):
            status = json.loads((tmp_path / "status.json").read_text())["steady"]
            if status["ready"] and status["pid"] != first:
                break
            await asyncio.sleep(0.05)
        assert status == {"pid": steady.pid, "ready": True, "restarts": 1}
        assert other.pid == other_pid and other.restarts == 0  # the others are untouched
    finally:
        await supervisor.stop(["steady", "other"], timeout_s=5)
        await watch
    assert steady.popen is not None and steady.popen.poll() is not None
    assert other.popen is not None and other.popen.poll() is not None


async def test_a_crash_looping_child_waits_longer_each_time(tmp_path: Path) -> None:
    looping = Child("looping", [sys.executable, "-c", "import sys; sys.exit(3)"],
                    tmp_path / "looping.ready")
    supervisor = Supervisor([looping], env={}, status_file=tmp_path / "status.json")
    with pytest.raises(RuntimeError, match="looping exited during start-up"):
        await supervisor.start_all(timeout_s=30)  # start-up failures are not retried
    watch = asyncio.create_task(supervisor.watch())
    try:
        await asyncio.sleep(2.5)  # restarts after 0, 0.5, 1 s (then 2 s): at most 4 deaths
    finally:
        await supervisor.stop(["looping"], timeout_s=5)
        await watch
    assert 2 <= looping.quick_failures <= 4, looping
    assert looping.restarts == looping.quick_failures
