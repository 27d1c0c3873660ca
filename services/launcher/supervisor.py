"""`edgeinfer up`'s process supervisor: each control-plane service in a process of its own,
restarted with backoff when it dies, its restarts logged and counted.

A child is `edgeinfer run <service>` with the platform's URLs in its environment. It
tells the supervisor it is ready by writing its pid to `EDGEINFER_READY_FILE`; the
supervisor's view of every child (pid, restarts, ready) is in `<state>/supervisor.json`.
Children get a parent-death signal, so a SIGKILLed `edgeinfer up` leaves none behind;
runners (grandchildren, started by the autoscaler) watch `EDGEINFER_SUPERVISOR_PID`
instead, and outlive an autoscaler that dies: the next one adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edgeinfer.shared.embedded import die_with_parent_thread

log = logging.getLogger("edgeinfer.supervisor")

# A child that ran this long before dying was healthy: it is restarted at once. One that
# keeps dying sooner waits longer each time (a crash loop must not eat the machine).
STABLE_RUN_S = 10.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def restart_delay(quick_failures: int) -> float:
    """Seconds to wait before the next start, after `quick_failures` deaths in a row
    that each came less than STABLE_RUN_S after the start before: 0, 0.5, 1, 2, … 30."""
    if quick_failures <= 0:
        return 0.0
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (quick_failures - 1))


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


@dataclass
class Child:
    name: str
    argv: list[str]
    ready_file: Path
    env: dict[str, str] = field(default_factory=dict)  # its own, over the supervisor's
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    quick_failures: int = 0
    started_at: float = 0.0
    ready: bool = False
    restart_at: float | None = None  # when dead and waiting out its backoff

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None


@dataclass
class Supervisor:
    children: list[Child]
    env: dict[str, str]
    status_file: Path
    stopping: bool = False
    _seen_zombies: set[int] = field(default_factory=set)

    def spawn(self, child: Child) -> None:
        child.ready_file.unlink(missing_ok=True)
        child.ready = False
        child.restart_at = None
        # From the main thread (the event loop's): the parent-death signal belongs to the
        # thread that forks. Its own process group: Ctrl-C is for `edgeinfer up` to handle,
        # which then stops the children in order (runners drain before the router goes).
        child.popen = subprocess.Popen(child.argv, env={**self.env, **child.env,
                                                        "EDGEINFER_READY_FILE": str(child.ready_file)},
                                       stdin=subprocess.DEVNULL, preexec_fn=die_with_parent_thread(),
                                       process_group=0)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.popen.pid)
        self.write_status()

    async def start_all(self, timeout_s: float) -> None:
        """Start every child and wait until each says it is ready."""
        for child in self.children:
            self.spawn(child)
        deadline = time.monotonic() + timeout_s
        while not all(self._check_ready(c) for c in self.children):
            for child in self.children:
                if child.popen is not None and (code := child.popen.poll()) is not None:
                    raise RuntimeError(f"{child.name} exited during start-up ({describe_exit(code)});"
                                       " its log is above")
            if time.monotonic() > deadline:
                late = [c.name for c in self.children if not c.ready]
                raise RuntimeError(f"not ready after {timeout_s:.0f} s: {', '.join(late)}")
            await asyncio.sleep(0.05)

    def _check_ready(self, child: Child) -> bool:
        if not child.ready and child.popen is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(child.ready_file.read_text()) == child.popen.pid:
                    child.ready = True
                    took = time.monotonic() - child.started_at
                    log.info("%s is ready (pid %d, %.2f s after its start)", child.name,
                             child.popen.pid, took)
                    self.write_status()
        return child.ready

    async def watch(self) -> None:
        """Restart children that die, until `stop`; reap orphaned runners."""
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                self._check_ready(child)
                self._tend(child, now)
            self._reap_orphans()
            await asyncio.sleep(0.05)

    def _tend(self, child: Child, now: float) -> None:
        if child.popen is None or self.stopping:
            return
        if child.restart_at is not None:
            if now >= child.restart_at:
                self.spawn(child)
            return
        code = child.popen.poll()
        if code is None:
            return
        ran_s = now - child.started_at
        child.quick_failures = child.quick_failures + 1 if ran_s < STABLE_RUN_S else 0
        child.restarts += 1
        delay = restart_delay(child.quick_failures)
        log.error("%s (pid %d) exited with %s after %.1f s; restarting it in %.1f s (restart %d)",
                  child.name, child.popen.pid, describe_exit(code), ran_s, delay, child.restarts)
        child.ready = False
        child.restart_at = now + delay
        self.write_status()

    def _reap_orphans(self) -> None:
        """As the subreaper, this process inherits the runners of a dead autoscaler (and a
        daemonised postmaster); reap those that have exited. Children we started are left
        to their Popen, and a zombie is reaped only when seen twice, so that a thread
        waiting on a `subprocess.run` of its own gets its exit status first."""
        mine = {c.pid for c in self.children}
        zombies = set()
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process().children():
                with contextlib.suppress(psutil.Error):
                    if proc.pid not in mine and proc.status() == psutil.STATUS_ZOMBIE:
                        zombies.add(proc.pid)
        for pid in zombies & self._seen_zombies:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        self._seen_zombies = zombies - self._seen_zombies

    async def stop(self, order: list[str], timeout_s: float = 60.0) -> None:
        """SIGTERM each child in `order` and wait for it (the autoscaler first: it drains its
        runners while the router still routes); SIGKILL what is left after the timeout."""
        self.stopping = True
        for name in order:
            for child in self.children:
                if child.name == name and child.popen is not None:
                    began = time.monotonic()
                    await asyncio.to_thread(_terminate, child.popen, timeout_s)
                    log.info("stopped %s in %.1f s", name, time.monotonic() - began)
        self.write_status()

    def write_status(self) -> None:
        status = {c.name: {"pid": c.pid, "ready": c.ready, "restarts": c.restarts}
                  for c in self.children}
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(self.status_file)


def _terminate(popen: subprocess.Popen[bytes], timeout_s: float) -> None:
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout_s)
    except subprocess.TimeoutExpired:
        log.error("pid %d did not stop in %.0f s; killing it", popen.pid, timeout_s)
        popen.kill()
        popen.wait()


def become_subreaper() -> None:
    """Orphans of our descendants (a dead autoscaler's runners) become our children rather
    than init's, so that we can reap them: PID 1 in a container often reaps nothing."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


PR_SET_CHILD_SUBREAPER = 36


async def keep_up(name: str, alive: Callable[[], bool], restart: Callable[[], Awaitable[None]],
                  poll_s: float = 0.25) -> None:
    """Restart a piece of infrastructure (the embedded nats-server, PostgreSQL) when it
    dies, with backoff while restarting keeps failing; log each restart with its number."""
    restarts = 0
    failures = 0
    while True:
        await asyncio.sleep(poll_s)
        if alive():
            failures = 0
            continue
        restarts += 1
        log.error("embedded %s is gone; restarting it (restart %d)", name, restarts)
        try:
            await restart()
            log.info("embedded %s is back", name)
        except Exception as exc:
            failures += 1
            delay = restart_delay(failures)
            log.error("restarting %s failed (%s); next try in %.1f s", name, exc, delay)
            await asyncio.sleep(delay)
