"""The stack that `edgeinfer up` starts, as a fixture: one per test module."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil
import pytest

from edgeinfer.shared.embedded import free_port
from tests.conftest import create_database, drop_database

T = TypeVar("T")


class Stack:
    def __init__(self, process: subprocess.Popen[bytes], ready: dict[str, Any], log: Path) -> None:
        self.process = process
        self.ready = ready
        self.log = log
        self.router = ready["router_url"]
        self.api = ready["api_url"]
        self.key = ready["api_key"]
        self.served = 0  # successful demo-tenant requests so far: what the ledger must hold

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@pytest.fixture(scope="module")
def stack_database(server_database_url: str) -> Iterator[str]:
    """A database of the module's own: a stack's autoscaler acts on every deployment it sees."""
    url = run(create_database(server_database_url))
    yield url
    run(drop_database(server_database_url, url))


@pytest.fixture(scope="module")
def stack(nats_url: str, stack_database: str, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Stack]:
    """`edgeinfer up`; a test module may set STACK_ENV to configure it.

    Its NATS is an embedded one, as on a fresh machine: with a user per service, so that
    every test runs each service with only its own rights. A module that must hold the
    NATS itself (to kill it, or to run a cluster) sets GIVEN_NATS = True and overrides
    the `nats_url` fixture; its NATS then has no users."""
    database_url = stack_database
    state = tmp_path_factory.mktemp("state")
    log = state / "up.log"
    given_nats = nats_url if getattr(request.module, "GIVEN_NATS", False) else ""
    env = {**os.environ, "NATS_URL": given_nats, "DATABASE_URL": database_url,
           "EDGEINFER_NAMESPACE": "e2e" + os.urandom(3).hex(), "EDGEINFER_STATE_DIR": str(state),
           "EDGEINFER_API_PORT": str(free_port()), "EDGEINFER_ROUTER_PORT": str(free_port()),
           **getattr(request.module, "STACK_ENV", {})}
    edgeinfer = Path(sys.executable).parent / "edgeinfer"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(edgeinfer), "up"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    ready_file = state / "ready.json"
    deadline = time.monotonic() + 180
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"edgeinfer up did not become ready:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    stack = Stack(process, json.loads(ready_file.read_text()), log)
    yield stack
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            _stop_tree(process)


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def process_env(p: psutil.Process) -> dict[str, str]:
    """A process's environment, or {} once it is gone (a zombie too) or not ours to read."""
    try:
        return p.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return {}


def process_cmdline(p: psutil.Process) -> list[str]:
    """A process's command line, or [] once it is gone (a zombie too) or not ours to read."""
    try:
        return p.cmdline()
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return []


def run(coro: Coroutine[Any, Any, T]) -> T:
    """A coroutine run to its end on a fresh event loop in a worker thread: the test
    session's own loop stays untouched (sync tests and fixtures use this)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def ledger_events(database_url: str, tenant_id: str,
                        deployment_id: str | None = None) -> dict[str, int]:
    """The ledger as event id → GPU-µs, for a tenant (and one of its deployments)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT event_id, gpu_us FROM metering.usage_events"
                                " WHERE tenant_id = $1 AND ($2::text IS NULL OR deployment_id = $2)",
                                tenant_id, deployment_id)
    finally:
        await conn.close()
    return {r["event_id"]: r["gpu_us"] for r in rows}


async def billable_us(database_url: str, tenant_id: str) -> int:
    """What billing sees of a tenant's usage: the delivered GPU-µs (metering's view)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT coalesce(sum(gpu_us), 0)::bigint FROM"
                                   " metering.billable_usage_hourly WHERE tenant_id = $1", tenant_id)
    finally:
        await conn.close()
