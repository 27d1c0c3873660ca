"""SQL for the usage ledger: a batch of events and their hourly sums in one transaction.

The batch is COPYed into a per-connection staging table, then one statement moves it:
`INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING` yields only the events not seen
before, and the aggregate upsert sums exactly those — a redelivered or republished event
changes nothing, in the same transaction (design.md, invariant 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from edgeinfer.shared.events import UsageEvent

_COLUMNS = ("event_id", "tenant_id", "request_id", "deployment_id", "model_version", "runner_id",
            "pop", "region", "gpu_class", "gpu_share", "busy_us", "gpu_us", "started_at",
            "ended_at")

# Per connection, emptied at every commit: a batch is COPYed in (binary, the fastest way
# rows reach PostgreSQL), then moved into the ledger with one statement.
_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS usage_staging ON COMMIT DELETE ROWS AS
    SELECT {", ".join(_COLUMNS)} FROM metering.usage_events WITH NO DATA
"""

_MOVE = f"""
WITH inserted AS (
    INSERT INTO metering.usage_events ({", ".join(_COLUMNS)})
    -- Sorted: concurrent writers meet shared ids (duplicates) in the same order, so one
    -- waits for the other instead of deadlocking.
    SELECT {", ".join(_COLUMNS)} FROM usage_staging ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING tenant_id, deployment_id, pop, region, gpu_class, started_at, gpu_us
), hourly AS (
    INSERT INTO metering.usage_hourly AS h (tenant_id, hour, deployment_id, pop, region,
        gpu_class, gpu_us, requests)
    SELECT tenant_id, date_trunc('hour', started_at, 'UTC'), deployment_id, pop, region,
        gpu_class, sum(gpu_us), count(*)
      FROM inserted GROUP BY 1, 2, 3, 4, 5, 6
    -- Sorted: two writers touching the same hours lock them in the same order.
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, hour, deployment_id, pop, region, gpu_class) DO UPDATE
        SET gpu_us = h.gpu_us + excluded.gpu_us, requests = h.requests + excluded.requests
)
SELECT count(*) FROM inserted
"""


async def record(conn: asyncpg.Connection, events: Sequence[UsageEvent]) -> int:
    """Record events inside the caller's transaction; returns how many were new."""
    if not events:
        return 0
    if not conn.is_in_transaction():
        raise RuntimeError("ledger.record needs a transaction: staging rows vanish at commit")
    await conn.execute(_STAGING)
    # A repeated id inside one batch (a runner retry that raced its own ack) would make the
    # move's ON CONFLICT see the row twice; keep the first.
    unique = {e.id: e for e in reversed(events)}
    await conn.copy_records_to_table("usage_staging", columns=_COLUMNS, records=[
        (e.id, e.tenant_id, e.request_id, e.deployment_id, e.model_version, e.runner_id, e.pop,
         e.region, e.gpu_class, e.gpu_share, e.busy_us, e.gpu_us, e.started_at, e.ended_at)
        for e in unique.values()])
    return int(await conn.fetchval(_MOVE))


async def usage_by_deployment(pool: asyncpg.Pool, tenant_id: str, start: datetime,
                              end: datetime) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT deployment_id, pop, region, gpu_class, sum(gpu_us)::bigint AS gpu_us,"
        " sum(requests)::bigint AS requests,"
        " sum(delivered_gpu_us)::bigint AS delivered_gpu_us,"
        " sum(delivered_requests)::bigint AS delivered_requests,"
        " sum(undelivered_gpu_us)::bigint AS undelivered_gpu_us,"
        " sum(undelivered_requests)::bigint AS undelivered_requests FROM metering.usage_hourly"
        " WHERE tenant_id = $1 AND hour >= $2 AND hour < $3"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", tenant_id, start, end)


async def gpu_us_by_runner(pool: asyncpg.Pool, runner_ids: list[str]) -> dict[str, int]:
    """The ledger's GPU-µs per runner (reconciliation against the runners' own counters)."""
    rows = await pool.fetch(
        "SELECT runner_id, sum(gpu_us)::bigint AS us FROM metering.usage_events"
        " WHERE runner_id = ANY($1::text[]) GROUP BY runner_id", runner_ids)
    return {r["runner_id"]: r["us"] for r in rows}


async def delivered_gpu_us_by_tenant(pool: asyncpg.Pool, since: datetime) -> dict[str, int]:
    """Each tenant's delivered (billable) GPU-µs since `since` (the month's start)."""
    rows = await pool.fetch(
        "SELECT tenant_id, sum(delivered_gpu_us)::bigint AS us FROM metering.usage_hourly"
        " WHERE hour >= $1 GROUP BY tenant_id", since)
    return {r["tenant_id"]: r["us"] for r in rows}
