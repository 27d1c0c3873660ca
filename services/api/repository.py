"""SQL for the accounts schema; every tenant-facing call takes the tenant id."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.auth import generate_api_key, hash_api_key


@dataclass(frozen=True)
class TenantRow:
    id: str
    name: str
    status: str
    created_at: datetime


@dataclass(frozen=True)
class IssuedKey:
    id: str
    tenant_id: str
    key: str  # shown once, never stored
    prefix: str
    label: str


def _tenant(row: asyncpg.Record) -> TenantRow:
    return TenantRow(row["id"], row["name"], row["status"], row["created_at"])


async def create_tenant(pool: asyncpg.Pool, name: str) -> TenantRow:
    tenant_id = "ten_" + secrets.token_hex(8)
    row = await pool.fetchrow(
        "INSERT INTO accounts.tenants (id, name) VALUES ($1, $2) RETURNING *", tenant_id, name)
    return _tenant(row)


async def get_tenant(pool: asyncpg.Pool, tenant_id: str) -> TenantRow | None:
    row = await pool.fetchrow("SELECT * FROM accounts.tenants WHERE id = $1", tenant_id)
    return _tenant(row) if row else None


async def list_tenants_admin(pool: asyncpg.Pool) -> list[TenantRow]:
    """Crosses tenants: for the admin API only."""
    rows = await pool.fetch("SELECT * FROM accounts.tenants ORDER BY created_at")
    return [_tenant(r) for r in rows]


async def issue_key(pool: asyncpg.Pool, tenant_id: str, label: str) -> IssuedKey:
    key = generate_api_key()
    key_id = "key_" + secrets.token_hex(8)
    prefix = key[:10]
    await pool.execute(
        "INSERT INTO accounts.api_keys (id, tenant_id, key_hash, prefix, label)"
        " VALUES ($1, $2, $3, $4, $5)",
        key_id, tenant_id, hash_api_key(key), prefix, label)
    return IssuedKey(key_id, tenant_id, key, prefix, label)


async def revoke_key(pool: asyncpg.Pool, tenant_id: str, key_id: str) -> bool:
    status = await pool.execute(
        "UPDATE accounts.api_keys SET revoked_at = now()"
        " WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL", tenant_id, key_id)
    return status.endswith(" 1")


async def resolve_key_hash(pool: asyncpg.Pool, key_hash: str) -> tuple[str | None, str]:
    """(tenant_id, status) for a key hash: status is active, revoked, suspended or unknown."""
    row = await pool.fetchrow(
        "SELECT k.tenant_id, k.revoked_at, t.status FROM accounts.api_keys k"
        " JOIN accounts.tenants t ON t.id = k.tenant_id WHERE k.key_hash = $1", key_hash)
    if row is None:
        return None, "unknown"
    if row["revoked_at"] is not None:
        return None, "revoked"
    if row["status"] != "active":
        return row["tenant_id"], row["status"]
    return row["tenant_id"], "active"
