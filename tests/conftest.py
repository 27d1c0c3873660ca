"""Real infrastructure for the tests.

NATS and PostgreSQL are the machine's when NATS_URL / DATABASE_URL are set, otherwise
embedded ones started from their wheels for this test session. Every test session gets
its own database (with the real migrations applied) and its own NATS namespace, so runs
never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from edgeinfer.shared.db import migrate
from edgeinfer.shared.embedded import start_nats, start_postgres
from tests.debian import debian_program


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgeinfer-test-") as d:
        path = Path(d)
        path.chmod(0o755)  # embedded PostgreSQL runs as its own system user when we are root
        yield path


@pytest.fixture(scope="session")
def nats_url(infra_dir: Path) -> Iterator[str]:
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
        return
    server = start_nats(infra_dir)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server_database_url(infra_dir: Path) -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = start_postgres(infra_dir)
    try:
        yield server.url
    finally:
        server.stop()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def create_database(server_database_url: str) -> str:
    """A new, empty database on the server, with migrations/ applied (never create_all)."""
    name = "edgeinfer_test_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_database_url, name)
    await migrate(url)
    return url


async def drop_database(server_database_url: str, url: str) -> None:
    admin = await asyncpg.connect(server_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(server_database_url: str) -> AsyncIterator[str]:
    """A fresh database for this session's integration tests."""
    url = await create_database(server_database_url)
    yield url
    await drop_database(server_database_url, url)


@pytest.fixture
def namespace() -> str:
    """A NATS namespace of this test's own: subjects, streams and buckets nobody else uses."""
    return "t" + secrets.token_hex(5)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert p is not None
    yield p
    await p.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (Playwright never downloads a browser here)."""
    return debian_program("chromium")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return debian_program("prometheus")


async def jetstream_ready(url: str, timeout_s: float = 60.0) -> None:
    """Until a NATS cluster at `url` has elected its JetStream leader (seconds after start)."""
    import asyncio
    import contextlib

    from edgeinfer.shared.bus import connect

    nc = await connect(url, "test-jetstream-ready")
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(Exception):
                await nc.jetstream().account_info()
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the NATS cluster at {url} never elected a JetStream leader")
    finally:
        await nc.close()
