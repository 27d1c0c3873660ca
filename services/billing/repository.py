"""All of billing's SQL: schema `billing`, and usage read through metering's one view.

Every call takes the tenant id where a tenant owns the rows; the few that cross tenants
(the close and push loops, the price book) say so in their names or docstrings. Usage is
read only through `metering.billable_usage_hourly` (services/metering/README.md): billing
never reads metering's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

import asyncpg

from edgeinfer.services.billing.invoices import Draft

Db = asyncpg.Connection | asyncpg.Pool

# ---- usage (metering's view) -------------------------------------------------------


async def hourly_usage(db: Db, tenant_id: str, start: datetime, end: datetime) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT hour, deployment_id, pop, region, gpu_class, gpu_us, requests"
        " FROM metering.billable_usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3"
        " ORDER BY hour, deployment_id, pop", tenant_id, start, end)


async def daily_usage(db: Db, tenant_id: str, start: datetime, end: datetime) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT (hour AT TIME ZONE 'UTC')::date AS day, deployment_id, pop,"
        " sum(gpu_us)::bigint AS gpu_us, sum(requests)::bigint AS requests"
        " FROM metering.billable_usage_hourly WHERE tenant_id = $1 AND hour >= $2 AND hour < $3"
        " GROUP BY 1, 2, 3 ORDER BY 1", tenant_id, start, end)


async def tenants_with_usage_before(db: Db, end: datetime) -> list[str]:
    """Across tenants (the month close): every tenant with usage before `end`."""
    rows = await db.fetch("SELECT DISTINCT tenant_id FROM metering.billable_usage_hourly"
                          " WHERE hour < $1", end)
    return [r["tenant_id"] for r in rows]


async def usage_months_before(db: Db, tenant_id: str, start: datetime) -> list[datetime]:
    rows = await db.fetch(
        "SELECT DISTINCT date_trunc('month', hour, 'UTC') AS month FROM"
        " metering.billable_usage_hourly WHERE tenant_id = $1 AND hour < $2", tenant_id, start)
    return [r["month"] for r in rows]


# ---- price book (not a tenant's) ---------------------------------------------------


async def price_book(db: Db) -> list[asyncpg.Record]:
    return await db.fetch("SELECT gpu_class, region, currency, unit_price, effective_from"
                          " FROM billing.price_book ORDER BY gpu_class, region, effective_from")


async def add_price(db: Db, gpu_class: str, region: str, currency: str, unit_price: Decimal,
                    effective_from: datetime) -> bool:
    """False when a price for that class and region already starts at that instant."""
    try:
        await db.execute("INSERT INTO billing.price_book (gpu_class, region, currency, unit_price,"
                         " effective_from) VALUES ($1, $2, $3, $4, $5)", gpu_class, region,
                         currency, unit_price, effective_from)
    except asyncpg.UniqueViolationError:
        return False
    return True


# ---- invoices ------------------------------------------------------------------------


async def lock_tenant_invoices(conn: asyncpg.Connection, tenant_id: str) -> None:
    """Until the caller's transaction ends: one closer per tenant, so none bills twice."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('invoice:' || $1))", tenant_id)


async def has_invoice(db: Db, tenant_id: str, period_start: datetime) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM billing.invoices WHERE tenant_id = $1 AND"
                                  " period_start = $2 LIMIT 1", tenant_id, period_start))


async def billed_usage_lines(db: Db, tenant_id: str) -> list[asyncpg.Record]:
    """Every usage and adjustment line already invoiced to the tenant, with its currency."""
    return await db.fetch(
        "SELECT l.*, i.currency FROM billing.invoice_lines l JOIN billing.invoices i"
        " ON i.id = l.invoice_id WHERE i.tenant_id = $1"
        " AND l.kind IN ('usage', 'adjustment')", tenant_id)


async def insert_invoice(conn: asyncpg.Connection, invoice_id: str, tenant_id: str,
                         start: datetime, end: datetime, draft: Draft) -> None:
    await conn.execute(
        "INSERT INTO billing.invoices (id, tenant_id, period_start, period_end, currency,"
        " subtotal, discounts, total) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        invoice_id, tenant_id, start, end, draft.currency, draft.subtotal, draft.discounts,
        draft.total)
    await conn.executemany(
        "INSERT INTO billing.invoice_lines (id, invoice_id, line_no, kind, usage_period_start,"
        " deployment_id, gpu_class, region, unit_price, gpu_us, requests, amount,"
        " credit_grant_id, description) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
        " $12, $13, $14)",
        [(f"{invoice_id}-{n:03d}", invoice_id, n, ln.kind, ln.usage_period, ln.deployment_id,
          ln.gpu_class, ln.region, ln.unit_price, ln.gpu_us, ln.requests, ln.amount,
          ln.credit_grant_id, ln.description) for n, ln in enumerate(draft.lines, start=1)])


async def list_invoices(db: Db, tenant_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM billing.invoices WHERE tenant_id = $1"
                          " ORDER BY period_start DESC, currency", tenant_id)


async def get_invoice(db: Db, tenant_id: str,
                      invoice_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    row = await db.fetchrow("SELECT * FROM billing.invoices WHERE id = $1 AND tenant_id = $2",
                            invoice_id, tenant_id)
    if row is None:
        return None
    return row, await invoice_lines(db, invoice_id)


async def invoice_lines(db: Db, invoice_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM billing.invoice_lines WHERE invoice_id = $1"
                          " ORDER BY line_no", invoice_id)


async def period_closed(db: Db, period_start: datetime) -> bool:
    return bool(await db.fetchval("SELECT 1 FROM billing.closed_periods WHERE period_start = $1",
                                  period_start))


async def mark_period_closed(db: Db, period_start: datetime, invoices: int) -> None:
    await db.execute("INSERT INTO billing.closed_periods (period_start, invoices) VALUES ($1, $2)"
                     " ON CONFLICT (period_start) DO NOTHING", period_start, invoices)


# ---- billing accounts and credits ------------------------------------------------------


async def billing_account(db: Db, tenant_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM billing.billing_accounts WHERE tenant_id = $1",
                             tenant_id)


async def save_billing_account(db: Db, tenant_id: str, free_tier_monthly: Decimal,
                               currency: str) -> None:
    await db.execute(
        "INSERT INTO billing.billing_accounts (tenant_id, free_tier_monthly, currency)"
        " VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET"
        " free_tier_monthly = excluded.free_tier_monthly, currency = excluded.currency,"
        " updated_at = now()", tenant_id, free_tier_monthly, currency)


async def credit_grants(db: Db, tenant_id: str) -> list[asyncpg.Record]:
    """Each grant with what is left of it (credit lines are negative amounts)."""
    return await db.fetch(
        "SELECT g.id, g.currency, g.amount, g.reason, g.granted_at, g.expires_at,"
        " g.amount + coalesce(sum(l.amount), 0) AS remaining FROM billing.credit_grants g"
        " LEFT JOIN billing.invoice_lines l ON l.credit_grant_id = g.id WHERE g.tenant_id = $1"
        " GROUP BY g.id ORDER BY g.granted_at", tenant_id)


async def insert_credit_grant(db: Db, grant_id: str, tenant_id: str, currency: str,
                              amount: Decimal, reason: str, expires_at: datetime | None) -> bool:
    """False when a grant with this id exists on other terms; the same terms again is a
    no-op that counts as granted (a retried request)."""
    existing = await db.fetchval(
        "WITH new AS (INSERT INTO billing.credit_grants (id, tenant_id, currency, amount, reason,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING RETURNING id)"
        " SELECT count(*) FROM billing.credit_grants g WHERE g.id = $1 AND NOT EXISTS"
        " (SELECT 1 FROM new) AND (g.tenant_id, g.currency, g.amount, g.reason, g.expires_at)"
        " IS DISTINCT FROM ($2, $3, $4, $5, $6)", grant_id, tenant_id, currency, amount, reason,
        expires_at)
    return existing == 0


# ---- budgets ---------------------------------------------------------------------------


async def all_budgets(db: Db) -> list[asyncpg.Record]:
    """Across tenants (the budget loop)."""
    return await db.fetch("SELECT * FROM billing.budgets ORDER BY tenant_id")


async def budget(db: Db, tenant_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM billing.budgets WHERE tenant_id = $1", tenant_id)


async def save_budget(db: Db, tenant_id: str, monthly_limit: Decimal, currency: str,
                      thresholds: Sequence[int], hard_stop: bool) -> None:
    await db.execute(
        "INSERT INTO billing.budgets (tenant_id, monthly_limit, currency, thresholds,"
        " hard_stop) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET"
        " monthly_limit = excluded.monthly_limit, currency = excluded.currency,"
        " thresholds = excluded.thresholds, hard_stop = excluded.hard_stop,"
        " updated_at = now()", tenant_id, monthly_limit, currency, list(thresholds), hard_stop)


async def delete_budget(db: Db, tenant_id: str) -> None:
    await db.execute("DELETE FROM billing.budgets WHERE tenant_id = $1", tenant_id)


async def budget_alerts(db: Db, tenant_id: str, period_start: datetime) -> list[asyncpg.Record]:
    return await db.fetch("SELECT threshold, crossed_at FROM billing.budget_alerts WHERE"
                          " tenant_id = $1 AND period_start = $2 ORDER BY threshold",
                          tenant_id, period_start)


async def record_budget_alert(db: Db, tenant_id: str, period_start: datetime, threshold: int,
                              spend: Decimal) -> bool:
    """True the first time this threshold is crossed this period (then tell whoever listens)."""
    inserted = await db.fetchval(
        "INSERT INTO billing.budget_alerts (tenant_id, period_start, threshold, spend)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING threshold",
        tenant_id, period_start, threshold, spend)
    return inserted is not None


# ---- Stripe bookkeeping ---------------------------------------------------------------


async def tenants_with_unpushed_invoices(db: Db) -> list[str]:
    """Across tenants (the Stripe loop)."""
    rows = await db.fetch("SELECT DISTINCT tenant_id FROM billing.invoices"
                          " WHERE stripe_pushed_at IS NULL ORDER BY tenant_id")
    return [r["tenant_id"] for r in rows]


async def unpushed_invoices(db: Db, tenant_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM billing.invoices WHERE tenant_id = $1 AND"
                          " stripe_pushed_at IS NULL ORDER BY period_start, currency", tenant_id)


async def lock_stripe_pushes(conn: asyncpg.Connection, tenant_id: str) -> None:
    """A session lock (Stripe calls happen while it is held): one pusher per tenant."""
    await conn.execute("SELECT pg_advisory_lock(hashtext('stripe:' || $1))", tenant_id)


async def unlock_stripe_pushes(conn: asyncpg.Connection, tenant_id: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtext('stripe:' || $1))", tenant_id)


async def set_line_stripe_item(db: Db, line_id: str, item_id: str) -> None:
    await db.execute("UPDATE billing.invoice_lines SET stripe_invoice_item_id = $1 WHERE id = $2",
                     item_id, line_id)


async def mark_invoice_pushed(db: Db, invoice_id: str, stripe_invoice_id: str | None) -> None:
    await db.execute("UPDATE billing.invoices SET stripe_invoice_id = $1, stripe_pushed_at = now()"
                     " WHERE id = $2", stripe_invoice_id, invoice_id)


async def set_stripe_customer(db: Db, tenant_id: str, customer_id: str) -> None:
    await db.execute(
        "INSERT INTO billing.billing_accounts (tenant_id, stripe_customer_id) VALUES ($1, $2)"
        " ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id",
        tenant_id, customer_id)


async def set_stripe_subscription(db: Db, tenant_id: str, subscription_id: str) -> None:
    await db.execute("UPDATE billing.billing_accounts SET stripe_subscription_id = $1"
                     " WHERE tenant_id = $2", subscription_id, tenant_id)
