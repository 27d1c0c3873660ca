"""SQL for the registry schema; every tenant-facing call takes the tenant id."""

from __future__ import annotations

import secrets

import asyncpg
import msgspec

from edgeinfer.shared.events import Deployment, Schedule

_DEPLOYMENT_SELECT = """
    SELECT d.id, d.tenant_id, d.name, m.name AS model_name, v.version AS model_version,
           m.framework, v.artifact_digest, d.gpu_class, d.allowed_pops,
           d.min_replicas, d.max_replicas, d.schedules, d.revision
      FROM registry.deployments d
      JOIN registry.model_versions v ON v.id = d.model_version_id
      JOIN registry.models m ON m.id = v.model_id
"""


def _deployment(row: asyncpg.Record) -> Deployment:
    return Deployment(
        id=row["id"], tenant_id=row["tenant_id"], name=row["name"], model_name=row["model_name"],
        model_version=row["model_version"], framework=row["framework"],
        artifact_digest=row["artifact_digest"], gpu_class=row["gpu_class"],
        allowed_pops=list(row["allowed_pops"]), min_replicas=row["min_replicas"],
        max_replicas=row["max_replicas"],
        schedules=msgspec.json.decode(row["schedules"], type=list[Schedule]),
        revision=row["revision"])


async def upsert_model(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, name: str,
                       framework: str) -> str:
    """The model's id; a model keeps the framework of its first version."""
    row = await conn.fetchrow(
        "INSERT INTO registry.models (id, tenant_id, name, framework) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (tenant_id, name) DO UPDATE SET framework = registry.models.framework"
        " RETURNING id, framework", "mdl_" + secrets.token_hex(8), tenant_id, name, framework)
    if row["framework"] != framework:
        raise ValueError(f"model {name!r} is a {row['framework']} model; its versions cannot be "
                         f"{framework}")
    return str(row["id"])


async def add_version(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, model_id: str,
                      version: str, digest: str, size: int) -> str:
    """A new model version, or the existing one when the same bytes are registered again."""
    row = await conn.fetchrow(
        "SELECT v.id, v.artifact_digest FROM registry.model_versions v"
        " JOIN registry.models m ON m.id = v.model_id"
        " WHERE m.tenant_id = $1 AND v.model_id = $2 AND v.version = $3", tenant_id, model_id, version)
    if row is not None:
        if row["artifact_digest"] != digest:
            raise ValueError(f"version {version!r} already exists with different content")
        return str(row["id"])
    version_id = "ver_" + secrets.token_hex(8)
    await conn.execute(
        "INSERT INTO registry.model_versions (id, model_id, version, artifact_digest, artifact_bytes)"
        " VALUES ($1, $2, $3, $4, $5)", version_id, model_id, version, digest, size)
    return version_id


async def version_id(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, model: str,
                     version: str) -> str | None:
    return await conn.fetchval(
        "SELECT v.id FROM registry.model_versions v JOIN registry.models m"
        " ON m.id = v.model_id WHERE m.tenant_id = $1 AND m.name = $2 AND v.version = $3",
        tenant_id, model, version)


async def upsert_deployment(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, name: str,
                            model_version_id: str, gpu_class: str, allowed_pops: list[str],
                            min_replicas: int, max_replicas: int,
                            schedules: list[Schedule] | None = None) -> Deployment:
    await conn.execute(
        "INSERT INTO registry.deployments (id, tenant_id, name, model_version_id, gpu_class,"
        " allowed_pops, min_replicas, max_replicas, schedules)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)"
        " ON CONFLICT (tenant_id, name) DO UPDATE SET model_version_id = excluded.model_version_id,"
        " gpu_class = excluded.gpu_class, allowed_pops = excluded.allowed_pops,"
        " min_replicas = excluded.min_replicas, max_replicas = excluded.max_replicas,"
        " schedules = excluded.schedules, updated_at = now(),"
        " revision = nextval('registry.deployment_changes')",
        "dep_" + secrets.token_hex(8), tenant_id, name, model_version_id, gpu_class, allowed_pops,
        min_replicas, max_replicas, msgspec.json.encode(schedules or []).decode())
    found = await get_deployment(conn, tenant_id, name)
    assert found is not None
    return found


async def get_deployment(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str,
                         name: str) -> Deployment | None:
    row = await conn.fetchrow(_DEPLOYMENT_SELECT + " WHERE d.tenant_id = $1 AND d.name = $2",
                              tenant_id, name)
    return _deployment(row) if row else None


async def list_deployments(pool: asyncpg.Pool, tenant_id: str) -> list[Deployment]:
    rows = await pool.fetch(_DEPLOYMENT_SELECT + " WHERE d.tenant_id = $1 ORDER BY d.name", tenant_id)
    return [_deployment(r) for r in rows]


async def list_all_deployments_admin(pool: asyncpg.Pool) -> tuple[list[Deployment], int]:
    """Crosses tenants: for the autoscaler's placement and the admin API only. With the last
    change number, read first: every change after it is published after this list."""
    async with pool.acquire() as conn:
        as_of = await conn.fetchval("SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
                                    " FROM registry.deployment_changes")
        rows = await conn.fetch(_DEPLOYMENT_SELECT + " ORDER BY d.tenant_id, d.name")
    return [_deployment(r) for r in rows], int(as_of)
