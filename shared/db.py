"""PostgreSQL: the connection pool and the migrations runner.

Migrations are plain SQL files under migrations/<schema>/NNNN_name.sql, one schema per
owning service, applied in order (by schema, then number) in one transaction each, under
an advisory lock so that several processes starting at once apply each file exactly once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Advisory-lock key: one migrator at a time, however many processes start together.
_LOCK_KEY = 0x6564_6765  # "edge"


@dataclass(frozen=True)
class Migration:
    schema: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*/*.sql")):
        number, _, name = path.stem.partition("_")
        if not number.isdigit():
            raise ValueError(f"{path}: migration files are named NNNN_description.sql")
        found.append(Migration(path.parent.name, int(number), name, path.read_text()))
    return sorted(found, key=lambda m: (m.schema, m.version))


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply what is not yet applied; refuse if an applied file was edited afterwards."""
    conn = await asyncpg.connect(dsn)
    applied_now = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.edgeinfer_migrations (
                   schema_name text NOT NULL,
                   version int NOT NULL,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (schema_name, version))"""
        )
        rows = await conn.fetch("SELECT schema_name, version, checksum FROM public.edgeinfer_migrations")
        done = {(r["schema_name"], r["version"]): r["checksum"] for r in rows}
        for migration in discover(directory):
            key = (migration.schema, migration.version)
            if key in done:
                if done[key] != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.schema}/{migration.version:04d}_{migration.name} "
                        "was changed after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO public.edgeinfer_migrations (schema_name, version, name, checksum)"
                    " VALUES ($1, $2, $3, $4)",
                    migration.schema, migration.version, migration.name, migration.checksum,
                )
            log.info("applied migration %s/%04d_%s", *key, migration.name)
            applied_now.append(migration)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        finally:
            await conn.close()
    return applied_now


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 5) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool
