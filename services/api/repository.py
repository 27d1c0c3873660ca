"""SQL for the accounts schema; every tenant-facing call takes the tenant id."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from edgeinfer.shared.auth import generate_api_key, hash_api_key
from edgeinfer.shared.events import ResolveKeyReply, TenantLimits


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


async def resolve_key_hash(pool: asyncpg.Pool, key_hash: str) -> ResolveKeyReply:
    """The tenant, status (active, revoked, suspended or unknown) and limits of a key hash."""
    row = await pool.fetchrow(
        "SELECT k.tenant_id, k.revoked_at, t.status, t.rate_limit_rps, t.rate_limit_burst,"
        " t.max_concurrency FROM accounts.api_keys k"
        " JOIN accounts.tenants t ON t.id = k.tenant_id WHERE k.key_hash = $1", key_hash)
    if row is None:
        return ResolveKeyReply(tenant_id=None, status="unknown")
    if row["revoked_at"] is not None:
        return ResolveKeyReply(tenant_id=None, status="revoked")
    return ResolveKeyReply(tenant_id=row["tenant_id"], status=row["status"], limits=_limits(row))


def _limits(row: asyncpg.Record) -> TenantLimits:
    return TenantLimits(rate_limit_rps=float(row["rate_limit_rps"]),
                        rate_limit_burst=row["rate_limit_burst"],
                        max_concurrency=row["max_concurrency"])


async def revoke_key_admin(pool: asyncpg.Pool, tenant_id: str, key_id: str) -> str | None:
    """Revoke; returns the key's hash (for the revocation event), None if no such live key."""
    return await pool.fetchval(
        "UPDATE accounts.api_keys SET revoked_at = now()"
        " WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING key_hash",
        tenant_id, key_id)


async def update_tenant_admin(
        pool: asyncpg.Pool, tenant_id: str, *, status: str | None = None,
        rate_limit_rps: float | None = None, rate_limit_burst: int | None = None,
        max_concurrency: int | None = None) -> tuple[str, TenantLimits] | None:
    """Change what is given (None keeps the current value)."""
    row = await pool.fetchrow(
        "UPDATE accounts.tenants SET status = coalesce($2, status),"
        " rate_limit_rps = coalesce($3, rate_limit_rps),"
        " rate_limit_burst = coalesce($4, rate_limit_burst),"
        " max_concurrency = coalesce($5, max_concurrency)"
        " WHERE id = $1 RETURNING status, rate_limit_rps, rate_limit_burst, max_concurrency",
        tenant_id, status, rate_limit_rps, rate_limit_burst, max_concurrency)
    return (row["status"], _limits(row)) if row else None


# ---- Idempotency-Key (services/api/idempotency.py) --------------------------------------

IDEMPOTENCY_WINDOW = "24 hours"
ABANDONED_AFTER = "2 minutes"  # longer than any API request runs


async def claim_idempotency_key(pool: asyncpg.Pool, principal: str, key: str,
                                fingerprint: bytes) -> asyncpg.Record | None:
    """None when this request claimed the key (it runs); else the row that holds it (a
    first answer to replay, one still running, or another request's). A row older than
    the window is forgotten first."""
    async with pool.acquire() as conn, conn.transaction():
        # Forgotten: past the window, or claimed by a request that never finished (its
        # process killed). What that one may have done is guarded where it matters (a
        # credit's id comes from its key: billing).
        await conn.execute(
            "DELETE FROM accounts.idempotency_keys WHERE principal = $1 AND key = $2"
            f" AND (created_at < now() - interval '{IDEMPOTENCY_WINDOW}'"
            f" OR (status IS NULL AND created_at < now() - interval '{ABANDONED_AFTER}'))",
            principal, key)
        claimed = await conn.fetchval(
            "INSERT INTO accounts.idempotency_keys (principal, key, fingerprint)"
            " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true",
            principal, key, fingerprint)
        if claimed:
            return None
        return await conn.fetchrow(
            "SELECT fingerprint, status, content_type, body FROM accounts.idempotency_keys"
            " WHERE principal = $1 AND key = $2", principal, key)


async def complete_idempotency_key(pool: asyncpg.Pool, principal: str, key: str, status: int,
                                   content_type: str, body: bytes) -> None:
    await pool.execute(
        "UPDATE accounts.idempotency_keys SET status = $3, content_type = $4, body = $5"
        " WHERE principal = $1 AND key = $2", principal, key, status, content_type, body)


async def release_idempotency_key(pool: asyncpg.Pool, principal: str, key: str) -> None:
    """The first request failed (5xx, or the process stopping): a retry may run again."""
    await pool.execute("DELETE FROM accounts.idempotency_keys WHERE principal = $1 AND key = $2"
                       " AND status IS NULL", principal, key)


async def forget_old_idempotency_keys(pool: asyncpg.Pool) -> int:
    deleted = await pool.execute("DELETE FROM accounts.idempotency_keys"
                                 f" WHERE created_at < now() - interval '{IDEMPOTENCY_WINDOW}'")
    return int(deleted.split()[-1])
