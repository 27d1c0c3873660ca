"""SQL for the usage ledger: one statement records a batch of events and their hourly sums.

`INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING` yields only the events not seen
before, and the aggregate upsert sums exactly those: a redelivered or republished event
changes nothing, in the same transaction (design.md, invariant 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from shared.events import UsageEvent

_RECORD = """
WITH inserted AS (
    INSERT INTO metering.usage_events (event_id, tenant_id, request_id, deployment_id,
        model_version, runner_id, pop, region, gpu_class, gpu_share, busy_us, gpu_us,
        started_at, ended_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::text[], $10::numeric[], $11::bigint[], $12::bigint[],
        $13::timestamptz[], $14::timestamptz[])
    ON CONFLICT (event_id) DO NOTHING
    RETURNING tenant_id, deployment_id, pop, region, gpu_class, started_at, gpu_us
), hourly AS (
    INSERT INTO metering.usage_hourly AS h (tenant_id, hour, deployment_id, pop, region,
        gpu_class, gpu_us, requests)
    SELECT tenant_id, date_trunc('hour', started_at, 'UTC'), deployment_id, pop, region,
        gpu_class, sum(gpu_us), count(*)
      FROM inserted GROUP BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, hour, deployment_id, pop, region, gpu_class) DO UPDATE
        SET gpu_us = h.gpu_us + excluded.gpu_us, requests = h.requests + excluded.requests
)
SELECT count(*) FROM inserted
"""


async def record(conn: asyncpg.Connection, events: Sequence[UsageEvent]) -> int:
    """Record events (call inside a transaction); returns how many were new."""
    if not events:
        return 0
    columns: list[list[object]] = [[] for _ in range(14)]
    for e in events:
        for column, value in zip(columns, (
                e.id, e.tenant_id, e.request_id, e.deployment_id, e.model_version, e.runner_id,
                e.pop, e.region, e.gpu_class, e.gpu_share, e.busy_us, e.gpu_us, e.started_at,
                e.ended_at), strict=True):
            column.append(value)
    return int(await conn.fetchval(_RECORD, *columns))


async def usage_by_deployment(pool: asyncpg.Pool, tenant_id: str, start: datetime,
                              end: datetime) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT deployment_id, pop, region, gpu_class, sum(gpu_us)::bigint AS gpu_us,"
        " sum(requests)::bigint AS requests FROM metering.usage_hourly"
        " WHERE tenant_id = $1 AND hour >= $2 AND hour < $3"
        " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", tenant_id, start, end)


async def hourly_usage(pool: asyncpg.Pool, tenant_id: str, start: datetime,
                       end: datetime) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT deployment_id, pop, region, gpu_class, hour, gpu_us, requests"
        " FROM metering.usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3"
        " ORDER BY hour", tenant_id, start, end)


async def price_book(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT gpu_class, region, currency, unit_price, effective_from FROM metering.price_book")
