"""PostgreSQL: the connection pool and the migrations runner.

Migrations are plain SQL files under migrations/<schema>/NNNN_name.sql, one schema per
owning service, applied in one transaction each, under an advisory lock so that several
processes starting at once apply each file exactly once.

Order: by schema, then number, except that a file may name migrations of other schemas
that must run before it, in a comment line `-- requires: metering/0004` (billing's first
migration moves tables out of metering's schema, and "billing" sorts before "metering").
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Advisory-lock key: one migrator at a time, however many processes start together.
_LOCK_KEY = 0x6564_6765  # "edge"


_REQUIRES = re.compile(r"^--\s*requires:\s*(.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    schema: str
    version: int
    name: str
    sql: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.schema, self.version)

    @property
    def requires(self) -> list[tuple[str, int]]:
        """Earlier migrations of other schemas this one needs (its `-- requires:` lines)."""
        out = []
        for line in _REQUIRES.findall(self.sql):
            for item in line.replace(",", " ").split():
                schema, _, number = item.partition("/")
                if not number.isdigit():
                    raise ValueError(f"{self.schema}/{self.version:04d}: `-- requires: {item}`"
                                     " must name schema/NNNN")
                out.append((schema, int(number)))
        return out

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
    return in_order(found)


def in_order(migrations: list[Migration]) -> list[Migration]:
    """By (schema, number), each file after the ones it requires and its schema's earlier
    files; refuses a requirement that names no file or that forms a cycle."""
    pending = sorted(migrations, key=lambda m: m.key)
    known = {m.key for m in pending}
    for m in pending:
        for need in m.requires:
            if need not in known:
                raise ValueError(f"{m.schema}/{m.version:04d} requires {need[0]}/{need[1]:04d},"
                                 " which does not exist")
    done: set[tuple[str, int]] = set()
    ordered: list[Migration] = []
    while pending:
        ready = next((m for m in pending
                      if all(n in done for n in m.requires)
                      and all(o.key in done for o in pending if o.schema == m.schema
                              and o.version < m.version)), None)
        if ready is None:
            raise ValueError("migrations require each other in a cycle: "
                             + ", ".join(f"{m.schema}/{m.version:04d}" for m in pending))
        pending.remove(ready)
        done.add(ready.key)
        ordered.append(ready)
    return ordered


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
