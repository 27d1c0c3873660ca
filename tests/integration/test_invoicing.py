"""Closing months into invoices on real PostgreSQL with the real migrations: a closed
invoice never changes; late usage is billed once, as an adjustment on the next invoice;
free tier and prepaid credits are applied; usage without a price blocks the close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing import repository as repo
from edgeinfer.shared.events import UsageEvent, new_id
from tests.seed import record_delivered

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
HOUR_US = 3_600 * 1_000_000  # one GPU-hour: $0.36 on cpu/eu-west, $0.324 on cpu/us-east


def event(tenant: str, at: datetime, gpu_us: int, pop: str = "eu-west", gpu_class: str = "cpu",
          deployment: str = "dep_a") -> UsageEvent:
    return UsageEvent(
        id=new_id(), source="test", time=at, tenant_id=tenant, request_id=new_id(),
        deployment_id=deployment, model_version="1", runner_id="r1", pop=pop, region=pop,
        gpu_class=gpu_class, gpu_share=Decimal(1), busy_us=gpu_us, gpu_us=gpu_us, started_at=at,
        ended_at=at + timedelta(microseconds=gpu_us))


async def record(pool: asyncpg.Pool, *events: UsageEvent) -> None:
    async with pool.acquire() as conn:
        await record_delivered(conn, list(events))


async def invoice_of(pool: asyncpg.Pool, tenant: str, month: datetime) -> dict:
    row = await pool.fetchrow("SELECT id FROM billing.invoices WHERE tenant_id = $1 AND"
                              " period_start = $2", tenant, month)
    found = await repo.get_invoice(pool, tenant, row["id"])
    assert found is not None
    return invoicing.invoice_view(*found)


async def test_late_usage_is_billed_once_as_an_adjustment(pool: asyncpg.Pool, namespace: str) -> None:
    tenant = "ten_" + namespace
    await record(pool, event(tenant, SEP + timedelta(days=3), 2 * HOUR_US),
                 event(tenant, SEP + timedelta(days=9), HOUR_US, pop="us-east"))
    report = await invoicing.close_month(pool, SEP)
    assert tenant not in report.blocked
    september = await invoice_of(pool, tenant, SEP)
    assert [(ln["kind"], ln["region"], ln["amount"]) for ln in september["lines"]] == [
        ("usage", "eu-west", "0.72"), ("usage", "us-east", "0.32")]
    assert september["total"] == "1.04"

    # A runner cut off in September publishes late; closing September again changes nothing.
    await record(pool, event(tenant, SEP + timedelta(days=29, hours=23), HOUR_US // 2))
    again = await invoicing.close_month(pool, SEP)
    assert tenant in again.already_closed
    assert await invoice_of(pool, tenant, SEP) == september

    # October: own usage, the free tier, a credit, and September's late usage as an adjustment.
    await record(pool, event(tenant, OCT + timedelta(days=1), 10 * HOUR_US))
    await pool.execute("INSERT INTO billing.billing_accounts (tenant_id, free_tier_monthly)"
                       " VALUES ($1, 1.00)", tenant)
    grant = "crd_" + namespace
    await pool.execute("INSERT INTO billing.credit_grants (id, tenant_id, currency, amount,"
                       " reason, granted_at) VALUES ($1, $2, 'USD', 2.00, 'test', $3)", grant,
                       tenant, SEP)
    await invoicing.close_month(pool, OCT)
    october = await invoice_of(pool, tenant, OCT)
    kinds = [(ln["kind"], ln["for_period"], ln["amount"]) for ln in october["lines"]]
    assert kinds == [("usage", "2026-10", "3.60"), ("adjustment", "2026-09", "0.18"),
                     ("free_tier", "2026-10", "-1.00"), ("credit", "2026-10", "-2.00")]
    assert (october["subtotal"], october["discounts"], october["total"]) == ("3.78", "-3.00", "0.78")
    adjustment = october["lines"][1]
    assert adjustment["gpu_seconds"] == "1800.000000"

    # Everything billed for September now equals September rated from the ledger today.
    rated = await invoicing.rated_usage(pool, tenant, SEP, OCT)
    billed = await pool.fetchval(
        "SELECT sum(l.amount) FROM billing.invoice_lines l JOIN billing.invoices i ON"
        " i.id = l.invoice_id WHERE i.tenant_id = $1 AND l.usage_period_start = $2"
        " AND l.kind IN ('usage', 'adjustment')", tenant, SEP)
    assert billed == sum(line.amount for line in rated.lines) == Decimal("1.22")
    (remaining,) = [g["remaining"] for g in await repo.credit_grants(pool, tenant)]
    assert remaining == Decimal("0.00")


async def test_usage_without_a_price_blocks_the_close(pool: asyncpg.Pool, namespace: str) -> None:
    tenant = "ten_" + namespace
    await record(pool, event(tenant, SEP + timedelta(days=2), HOUR_US, pop="ap-south",
                             gpu_class="h100"))
    report = await invoicing.close_month(pool, SEP)
    assert "no price in effect" in report.blocked[tenant]
    assert await pool.fetchval("SELECT count(*) FROM billing.invoices WHERE tenant_id = $1",
                               tenant) == 0
