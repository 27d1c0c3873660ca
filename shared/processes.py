"""Whether a process runs: the one test every supervisor here needs.

A killed process is a zombie until its parent reaps it (and an init that reaps nothing,
seen in this project's sandboxes, never does): `kill(pid, 0)` succeeds on a zombie, so it
must count as dead. A pid reused by a later process is told apart by its start time
(psutil.Process.is_running).
"""

from __future__ import annotations

import psutil


def alive(process: psutil.Process) -> bool:
    """Running: not gone, not a zombie, and still the same process (not a reused pid)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
