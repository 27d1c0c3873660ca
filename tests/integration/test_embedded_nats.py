"""The embedded nats-server never outlives `edgeinfer up`, and never shares its store with a
server an earlier, hard-killed run left behind (two servers on one JetStream store would
both write its files)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from edgeinfer.shared.embedded import free_port, nats_server_binary, start_nats
from tests.integration.parent_death import sigkill_after_start, wait_gone


def test_ctrl_c_in_a_terminal_does_not_reach_the_nats_server(tmp_path: Path) -> None:
    """A terminal's Ctrl-C goes to its whole foreground process group; the server must be
    left for `edgeinfer up` to stop after the runners have flushed their usage."""
    nats = start_nats(tmp_path)
    try:
        assert os.getpgid(nats.process.pid) != os.getpgid(0)
    finally:
        nats.stop()


def test_a_sigkilled_parent_takes_its_nats_server_with_it(tmp_path: Path) -> None:
    nats_pid = sigkill_after_start(
        "import sys, time; from pathlib import Path; from edgeinfer.shared.embedded import start_nats;"
        "n = start_nats(Path(sys.argv[1])); print(n.process.pid, flush=True); time.sleep(600)",
        tmp_path)
    assert wait_gone(nats_pid), "nats-server outlived its SIGKILLed parent"


def test_an_orphaned_server_on_the_same_store_is_stopped_first(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    store.mkdir()
    orphan = subprocess.Popen(  # as a hard-killed run on another OS would leave it
        [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(free_port()), "-sd", str(store),
         "-P", str(tmp_path / "nats-server.pid")], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "nats-server.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh = start_nats(tmp_path)
        try:
            assert orphan.wait(10) is not None  # stopped before the new one started
            assert fresh.process.poll() is None
        finally:
            fresh.stop()
    finally:
        if orphan.poll() is None:
            orphan.kill()
