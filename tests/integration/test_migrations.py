from pathlib import Path

import asyncpg
import pytest

from edgeinfer.shared.db import discover, migrate


async def test_migrations_are_applied_once(database_url: str) -> None:
    assert await migrate(database_url) == []  # the session fixture applied them already
    conn = await asyncpg.connect(database_url)
    try:
        schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
    finally:
        await conn.close()
    assert {"accounts", "registry", "metering", "billing"} <= schemas


def test_each_service_owns_one_schema() -> None:
    assert {m.schema for m in discover()} == {"accounts", "registry", "metering", "billing"}


async def test_an_edited_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "accounts").mkdir()
    for m in discover():
        if m.schema == "accounts":
            (tmp_path / "accounts" / f"{m.version:04d}_{m.name}.sql").write_text(m.sql + "\n-- edit")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        await migrate(database_url, tmp_path)
