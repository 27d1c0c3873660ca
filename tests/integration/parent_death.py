"""For tests of what an embedded server does when the process that started it dies."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def sigkill_after_start(script: str, state_dir: Path) -> int:
    """Run `script` (which starts a server in `sys.argv[1]`, prints the server's pid and
    waits) in a new Python process, SIGKILL that process — no atexit, no finally — and
    return the server's pid."""
    parent = subprocess.Popen([sys.executable, "-c", script, str(state_dir)],
                              stdout=subprocess.PIPE, cwd=REPO)
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    assert psutil.pid_exists(server)
    parent.kill()
    parent.wait()
    return server
