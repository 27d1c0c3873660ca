"""Only delivered usage is billed, on real NATS JetStream and PostgreSQL: a router's batched
confirmations (its own DeliveryConfirmations) settle the runners' usage events, whichever
arrives first; an unconfirmed event turns `undelivered` after the grace and is not billed;
a late confirmation still bills it once."""

from __future__ import annotations

import asyncio

import asyncpg
from nats.aio.client import Client as NATS

from edgeinfer.services.metering.config import MeteringConfig
from edgeinfer.services.metering.service import MeteringService
from edgeinfer.services.router.deliveries import DeliveryConfirmations
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.bus import ensure_streams
from edgeinfer.shared.clock import SYSTEM_CLOCK
from edgeinfer.shared.events import encode
from edgeinfer.shared.subjects import Subjects
from tests.integration.test_metering_ledger import usage, wait_until
from tests.seed import register_deployment

GRACE_S = 3.0


async def sums(pool: asyncpg.Pool, tenant: str) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(gpu_us), 0)::bigint total, coalesce(sum(delivered_gpu_us), 0)::bigint"
        " delivered, coalesce(sum(undelivered_gpu_us), 0)::bigint undelivered,"
        " coalesce(sum(delivered_requests), 0)::bigint delivered_n"
        " FROM metering.usage_hourly WHERE tenant_id = $1", tenant)
    billable = await pool.fetchval("SELECT coalesce(sum(gpu_us), 0)::bigint FROM"
                                   " metering.billable_usage_hourly WHERE tenant_id = $1", tenant)
    return {**dict(row), "billable": billable}


async def test_billable_is_exactly_what_routers_confirmed(
        nc: NATS, pool: asyncpg.Pool, namespace: str) -> None:
    subjects = Subjects(namespace)
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    tenant = "ten_" + namespace
    await register_deployment(pool, "dep_" + tenant, tenant)
    events = [usage(tenant, 1000 + i) for i in range(300)]
    confirmed_first = events[:100]    # the confirmation reaches metering before the usage
    confirmed_after = events[100:200]  # the usual order
    never = events[200:250]           # the router died before confirming: undelivered
    late = events[250:]               # confirmed only after the grace: undelivered, then billed
    router = DeliveryConfirmations(js, subjects.delivered("eu-west"), RouterMetrics(),
                                   SYSTEM_CLOCK, flush_s=0.05, max_batch=40)
    metering = MeteringService(pool, nc, subjects, MeteringConfig(
        delivery_grace_s=GRACE_S, settle_interval_s=0.2))
    await metering.start()
    try:
        for e in confirmed_first:
            await router.delivered(e.request_id)
        await router.flush()
        await wait_until(lambda: count(pool, "SELECT count(*) FROM metering.deliveries"
                                       " WHERE request_id = ANY($1::text[])",
                                       [e.request_id for e in confirmed_first], 100))
        for e in events:
            await js.publish(subjects.usage(e.pop), encode(e), headers={"Nats-Msg-Id": e.id})
        for e in confirmed_after + confirmed_after[:10]:  # ten confirmed twice
            await router.delivered(e.request_id)
        await router.flush()
        delivered_us = sum(e.gpu_us for e in confirmed_first + confirmed_after)
        await wait_until(lambda: equals(sums(pool, tenant), "delivered", delivered_us))
        # Unconfirmed events wait out the grace, then are marked undelivered, not billed.
        undelivered_us = sum(e.gpu_us for e in never + late)
        await wait_until(lambda: equals(sums(pool, tenant), "undelivered", undelivered_us))
        now = await sums(pool, tenant)
        assert now == {"total": sum(e.gpu_us for e in events), "delivered": delivered_us,
                       "undelivered": undelivered_us, "delivered_n": 200, "billable": delivered_us}
        # A confirmation after the grace still bills, once; the rest stays undelivered.
        for e in late:
            await router.delivered(e.request_id)
        await router.flush()
        await wait_until(lambda: equals(sums(pool, tenant), "delivered",
                                        delivered_us + sum(e.gpu_us for e in late)))
        await asyncio.sleep(0.5)
        final = await sums(pool, tenant)
        assert final["undelivered"] == sum(e.gpu_us for e in never)
        assert final["billable"] == final["delivered"] == final["total"] - final["undelivered"]
        outcomes = dict(await pool.fetch(
            "SELECT outcome, count(*) FROM metering.usage_events WHERE tenant_id = $1"
            " GROUP BY 1", tenant))
        assert outcomes == {"delivered": 250, "undelivered": 50}
        assert await pool.fetchval("SELECT count(*) FROM metering.deliveries WHERE request_id"
                                   " = ANY($1::text[])", [e.request_id for e in events]) == 0
    finally:
        await metering.stop()


async def count(pool: asyncpg.Pool, sql: str, arg: object, expected: int) -> bool:
    return await pool.fetchval(sql, arg) == expected


async def equals(sums_now: object, key: str, expected: int) -> bool:
    return (await sums_now)[key] == expected  # type: ignore[index, misc]
