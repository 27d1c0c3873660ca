"""Settling usage: which GPU time was delivered (billable) and which was not.

A usage event comes from the runner that served the request; its confirmation comes from
the router that handed the answer to the client (services/router/deliveries.py). Either
may arrive first, through different consumers, so matching them is one serialised step
(`settle`, under an advisory lock) rather than something each writer tries on its own:
two concurrent transactions would each miss the other's uncommitted half.

- An event with a confirmation becomes `delivered`, and its time moves into the hourly
  sums' delivered columns (what `metering.billable_usage_hourly` shows billing).
- An event still `pending` after the grace becomes `undelivered`: kept for conservation,
  shown to the tenant, not billed. A confirmation that arrives later still turns it
  `delivered` (a router whose NATS was away for longer than the grace): billed late, as an
  adjustment if its month is closed, never twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# Any constant shared by every metering process: one settles at a time.
_SETTLE_LOCK = 0x6564_6765_7365_7431  # "edgesett"

_HOURLY_KEY = "tenant_id, date_trunc('hour', started_at, 'UTC'), deployment_id, pop, region, gpu_class"
_JOIN_HOURLY = """
 WHERE h.tenant_id = s.tenant_id AND h.hour = s.hour AND h.deployment_id = s.deployment_id
   AND h.pop = s.pop AND h.region = s.region AND h.gpu_class = s.gpu_class"""

_DELIVER = f"""
WITH matched AS (
    DELETE FROM metering.deliveries d USING metering.usage_events e
     WHERE e.request_id = d.request_id AND e.outcome <> 'delivered'
    RETURNING e.event_id, e.outcome AS was
), settled AS (
    UPDATE metering.usage_events e SET outcome = 'delivered' FROM matched m
     WHERE e.event_id = m.event_id
    RETURNING e.tenant_id, e.started_at, e.deployment_id, e.pop, e.region, e.gpu_class,
              e.gpu_us, m.was
), sums AS (
    UPDATE metering.usage_hourly h
       SET delivered_gpu_us = h.delivered_gpu_us + s.gpu_us,
           delivered_requests = h.delivered_requests + s.requests,
           undelivered_gpu_us = h.undelivered_gpu_us - s.was_undelivered_us,
           undelivered_requests = h.undelivered_requests - s.was_undelivered
      FROM (SELECT tenant_id, date_trunc('hour', started_at, 'UTC') AS hour, deployment_id, pop,
                   region, gpu_class, sum(gpu_us) AS gpu_us, count(*) AS requests,
                   coalesce(sum(gpu_us) FILTER (WHERE was = 'undelivered'), 0) AS was_undelivered_us,
                   count(*) FILTER (WHERE was = 'undelivered') AS was_undelivered
              FROM settled GROUP BY {_HOURLY_KEY}) s
    {_JOIN_HOURLY}
    RETURNING 1
)
SELECT count(*) FROM settled
"""

_EXPIRE = f"""
WITH expired AS (
    UPDATE metering.usage_events SET outcome = 'undelivered'
     WHERE outcome = 'pending' AND received_at < now() - make_interval(secs => $1)
    RETURNING tenant_id, started_at, deployment_id, pop, region, gpu_class, gpu_us
), sums AS (
    UPDATE metering.usage_hourly h
       SET undelivered_gpu_us = h.undelivered_gpu_us + s.gpu_us,
           undelivered_requests = h.undelivered_requests + s.requests
      FROM (SELECT tenant_id, date_trunc('hour', started_at, 'UTC') AS hour, deployment_id, pop,
                   region, gpu_class, sum(gpu_us) AS gpu_us, count(*) AS requests
              FROM expired GROUP BY {_HOURLY_KEY}) s
    {_JOIN_HOURLY}
    RETURNING 1
)
SELECT count(*) FROM expired
"""

# A confirmation whose usage event never came (the runner's usage dead-lettered, or a
# request a runner never charged) is kept this long, then forgotten.
_FORGET_UNMATCHED = "DELETE FROM metering.deliveries WHERE received_at < now() - interval '7 days'"


@dataclass(frozen=True)
class Settled:
    delivered: int
    undelivered: int


async def record_deliveries(conn: asyncpg.Connection, request_ids: Sequence[str]) -> None:
    """Store confirmations (a repeat changes nothing); `settle` matches them."""
    await conn.execute(
        "INSERT INTO metering.deliveries (request_id) SELECT unnest($1::text[])"
        " ON CONFLICT (request_id) DO NOTHING", list(request_ids))


async def settle(pool: asyncpg.Pool, grace_s: float) -> Settled:
    """One settling round in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        return await settle_in(conn, grace_s)


async def settle_in(conn: asyncpg.Connection, grace_s: float) -> Settled:
    """Match confirmations with their events, then expire what waited past the grace,
    inside the caller's transaction. Matching first: an event confirmed in this very round
    is never marked undelivered."""
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SETTLE_LOCK):
        return Settled(0, 0)  # another metering process is settling right now
    delivered = await conn.fetchval(_DELIVER)
    undelivered = await conn.fetchval(_EXPIRE, grace_s)
    await conn.execute(_FORGET_UNMATCHED)
    return Settled(delivered, undelivered)
