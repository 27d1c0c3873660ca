"""Closing months into invoices, and reading them back (the I/O around invoices.py).

A month closes for a tenant once (unique on tenant × month × currency), inside one
transaction under a per-tenant advisory lock, so two closers never bill twice. The close
re-rates every earlier month the tenant has usage in, so late usage is billed exactly
once, as an adjustment on the first invoice closed after it arrived. A tenant with usage
that has no price in effect is not closed (it is reported) rather than billed at zero.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.metering import ledger
from services.metering.invoices import BilledLine, CreditGrant, Draft, compose
from services.metering.rating import Price, Rated, UsageRow, rate


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def parse_month(text: str) -> datetime:
    """"2026-10" → 2026-10-01T00:00Z."""
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month {text!r} must look like 2026-10") from None


async def rated_usage(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, start: datetime,
                      end: datetime) -> Rated:
    rows = [UsageRow(r["deployment_id"], r["pop"], r["region"], r["gpu_class"], r["hour"],
                     r["gpu_us"], r["requests"])
            for r in await ledger.hourly_usage(conn, tenant_id, start, end)]
    prices = [Price(r["gpu_class"], r["region"], r["currency"], r["unit_price"],
                    r["effective_from"]) for r in await ledger.price_book(conn)]
    return rate(rows, prices)


@dataclass
class CloseReport:
    period: str
    invoices: list[str] = field(default_factory=list)
    already_closed: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # tenant → why not closed


async def close_month(pool: asyncpg.Pool, start: datetime) -> CloseReport:
    end = next_month(start)
    report = CloseReport(f"{start:%Y-%m}")
    tenants = await pool.fetch(
        "SELECT DISTINCT tenant_id FROM metering.usage_hourly WHERE hour < $1", end)
    for row in tenants:
        tenant_id = row["tenant_id"]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('invoice:' || $1))", tenant_id)
            if await conn.fetchval("SELECT 1 FROM metering.invoices WHERE tenant_id = $1 AND"
                                   " period_start = $2 LIMIT 1", tenant_id, start):
                report.already_closed.append(tenant_id)
                continue
            drafts, blocked = await _drafts(conn, tenant_id, start, end)
            if blocked:
                report.blocked[tenant_id] = blocked
                continue
            for draft in drafts:
                report.invoices.append(await _store(conn, tenant_id, start, end, draft))
    return report


async def _drafts(conn: asyncpg.Connection, tenant_id: str, start: datetime,
                  end: datetime) -> tuple[list[Draft], str | None]:
    rated = await rated_usage(conn, tenant_id, start, end)
    earlier_months = [r["month"] for r in await conn.fetch(
        "SELECT DISTINCT date_trunc('month', hour, 'UTC') AS month FROM metering.usage_hourly"
        " WHERE tenant_id = $1 AND hour < $2", tenant_id, start)]
    earlier = {m: await rated_usage(conn, tenant_id, m, next_month(m)) for m in earlier_months}
    unpriced = rated.unpriced + [u for r in earlier.values() for u in r.unpriced]
    if unpriced:
        first = unpriced[0]
        return [], (f"{len(unpriced)} hour(s) of usage have no price in effect, e.g. "
                    f"{first.gpu_class} in {first.region} at {first.hour.isoformat()}")
    billed = [(r["currency"], BilledLine(r["usage_period_start"], r["deployment_id"],
                                         r["gpu_class"], r["region"], r["unit_price"], r["gpu_us"],
                                         r["requests"], r["amount"]))
              for r in await conn.fetch(
                  "SELECT l.*, i.currency FROM metering.invoice_lines l JOIN metering.invoices i"
                  " ON i.id = l.invoice_id WHERE i.tenant_id = $1"
                  " AND l.kind IN ('usage', 'adjustment')", tenant_id)]
    account = await conn.fetchrow("SELECT free_tier_monthly, currency FROM"
                                  " metering.billing_accounts WHERE tenant_id = $1", tenant_id)
    grants = await credit_grants(conn, tenant_id)
    currencies = {ln.currency for r in (rated, *earlier.values()) for ln in r.lines}
    currencies |= {currency for currency, _ in billed}
    drafts = []
    for currency in sorted(currencies):
        free = account["free_tier_monthly"] if account and account["currency"] == currency \
            else Decimal(0)
        draft = compose(start, end, currency, rated, earlier,
                        [b for c, b in billed if c == currency], free,
                        [CreditGrant(g["id"], g["remaining"], g["granted_at"], g["expires_at"])
                         for g in grants if g["currency"] == currency])
        if draft.lines:
            drafts.append(draft)
    return drafts, None


async def _store(conn: asyncpg.Connection, tenant_id: str, start: datetime, end: datetime,
                 draft: Draft) -> str:
    invoice_id = "inv_" + secrets.token_hex(16)  # random: a public id must not count invoices
    await conn.execute(
        "INSERT INTO metering.invoices (id, tenant_id, period_start, period_end, currency,"
        " subtotal, discounts, total) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        invoice_id, tenant_id, start, end, draft.currency, draft.subtotal, draft.discounts,
        draft.total)
    await conn.executemany(
        "INSERT INTO metering.invoice_lines (id, invoice_id, line_no, kind, usage_period_start,"
        " deployment_id, gpu_class, region, unit_price, gpu_us, requests, amount,"
        " credit_grant_id, description) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
        " $12, $13, $14)",
        [(f"{invoice_id}-{n:03d}", invoice_id, n, ln.kind, ln.usage_period, ln.deployment_id,
          ln.gpu_class, ln.region, ln.unit_price, ln.gpu_us, ln.requests, ln.amount,
          ln.credit_grant_id, ln.description) for n, ln in enumerate(draft.lines, start=1)])
    return invoice_id


async def credit_grants(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    """Each grant with what is left of it (credit lines are negative amounts)."""
    return await conn.fetch(
        "SELECT g.id, g.currency, g.amount, g.reason, g.granted_at, g.expires_at,"
        " g.amount + coalesce(sum(l.amount), 0) AS remaining FROM metering.credit_grants g"
        " LEFT JOIN metering.invoice_lines l ON l.credit_grant_id = g.id WHERE g.tenant_id = $1"
        " GROUP BY g.id ORDER BY g.granted_at", tenant_id)


def invoice_view(row: asyncpg.Record, lines: list[asyncpg.Record] | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row["id"], "period": f"{row['period_start']:%Y-%m}",
        "period_start": row["period_start"].isoformat(), "period_end": row["period_end"].isoformat(),
        "currency": row["currency"], "subtotal": str(row["subtotal"]),
        "discounts": str(row["discounts"]), "total": str(row["total"]),
        "closed_at": row["closed_at"].isoformat(), "status": "closed",
        "stripe_invoice_id": row["stripe_invoice_id"]}
    if lines is not None:
        view["lines"] = [{
            "id": ln["id"], "kind": ln["kind"], "for_period": f"{ln['usage_period_start']:%Y-%m}",
            "description": ln["description"], "deployment_id": ln["deployment_id"],
            "gpu_class": ln["gpu_class"], "region": ln["region"],
            "gpu_seconds": str(Decimal(ln["gpu_us"]).scaleb(-6)), "requests": ln["requests"],
            "unit_price": None if ln["unit_price"] is None else str(ln["unit_price"].normalize()),
            "amount": str(ln["amount"])} for ln in lines]
    return view


async def list_invoices(pool: asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM metering.invoices WHERE tenant_id = $1"
                            " ORDER BY period_start DESC, currency", tenant_id)


async def get_invoice(pool: asyncpg.Pool, tenant_id: str,
                      invoice_id: str) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    row = await pool.fetchrow("SELECT * FROM metering.invoices WHERE id = $1 AND tenant_id = $2",
                              invoice_id, tenant_id)
    if row is None:
        return None
    lines = await pool.fetch("SELECT * FROM metering.invoice_lines WHERE invoice_id = $1"
                             " ORDER BY line_no", invoice_id)
    return row, lines


async def credits_view(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any]:
    grants = await credit_grants(pool, tenant_id)
    account = await pool.fetchrow("SELECT free_tier_monthly, currency FROM"
                                  " metering.billing_accounts WHERE tenant_id = $1", tenant_id)
    return {"free_tier_monthly": str(account["free_tier_monthly"]) if account else "0.00",
            "currency": account["currency"] if account else "USD",
            "grants": [{"id": g["id"], "amount": str(g["amount"]), "currency": g["currency"],
                        "remaining": str(g["remaining"]), "reason": g["reason"],
                        "granted_at": g["granted_at"].isoformat(),
                        "expires_at": g["expires_at"].isoformat() if g["expires_at"] else None}
                       for g in grants]}
