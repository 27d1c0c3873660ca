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
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.invoices import BilledLine, CreditGrant, Draft, compose
from edgeinfer.services.billing.rating import Price, Rated, UsageRow, rate
from edgeinfer.shared.periods import next_month


async def rated_usage(db: repo.Db, tenant_id: str, start: datetime, end: datetime) -> Rated:
    rows = [UsageRow(r["deployment_id"], r["pop"], r["region"], r["gpu_class"], r["hour"],
                     r["gpu_us"], r["requests"])
            for r in await repo.hourly_usage(db, tenant_id, start, end)]
    prices = [Price(r["gpu_class"], r["region"], r["currency"], r["unit_price"],
                    r["effective_from"]) for r in await repo.price_book(db)]
    return rate(rows, prices)


@dataclass
class CloseReport:
    period: str
    invoices: list[str] = field(default_factory=list)
    already_closed: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # tenant → why not closed


async def close_month(pool: asyncpg.Pool, start: datetime) -> CloseReport:
    """Invoice every tenant with usage up to the month's end that has no invoice for it yet;
    once none is left blocked, the month is marked closed (close_month_once skips it)."""
    end = next_month(start)
    report = CloseReport(f"{start:%Y-%m}")
    for tenant_id in await repo.tenants_with_usage_before(pool, end):
        async with pool.acquire() as conn, conn.transaction():
            await repo.lock_tenant_invoices(conn, tenant_id)
            if await repo.has_invoice(conn, tenant_id, start):
                report.already_closed.append(tenant_id)
                continue
            drafts, blocked = await _drafts(conn, tenant_id, start, end)
            if blocked:
                report.blocked[tenant_id] = blocked
                continue
            for draft in drafts:
                invoice_id = "inv_" + secrets.token_hex(16)  # random: ids must not count invoices
                await repo.insert_invoice(conn, invoice_id, tenant_id, start, end, draft)
                report.invoices.append(invoice_id)
    if not report.blocked:
        await repo.mark_period_closed(pool, start, len(report.invoices))
    return report


async def close_month_once(pool: asyncpg.Pool, start: datetime) -> CloseReport | None:
    """close_month, unless the month was already closed for every tenant (None): the loop
    asks every few minutes, and must not scan all usage ever recorded each time."""
    if await repo.period_closed(pool, start):
        return None
    return await close_month(pool, start)


async def _drafts(conn: asyncpg.Connection, tenant_id: str, start: datetime,
                  end: datetime) -> tuple[list[Draft], str | None]:
    rated = await rated_usage(conn, tenant_id, start, end)
    earlier = {m: await rated_usage(conn, tenant_id, m, next_month(m))
               for m in await repo.usage_months_before(conn, tenant_id, start)}
    unpriced = rated.unpriced + [u for r in earlier.values() for u in r.unpriced]
    if unpriced:
        first = unpriced[0]
        return [], (f"{len(unpriced)} hour(s) of usage have no price in effect, e.g. "
                    f"{first.gpu_class} in {first.region} at {first.hour.isoformat()}")
    billed = [(r["currency"], BilledLine(r["usage_period_start"], r["deployment_id"],
                                         r["gpu_class"], r["region"], r["unit_price"], r["gpu_us"],
                                         r["requests"], r["amount"]))
              for r in await repo.billed_usage_lines(conn, tenant_id)]
    account = await repo.billing_account(conn, tenant_id)
    grants = await repo.credit_grants(conn, tenant_id)
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


async def credits_view(db: repo.Db, tenant_id: str) -> dict[str, Any]:
    grants = await repo.credit_grants(db, tenant_id)
    account = await repo.billing_account(db, tenant_id)
    return {"free_tier_monthly": str(account["free_tier_monthly"]) if account else "0.00",
            "currency": account["currency"] if account else "USD",
            "grants": [{"id": g["id"], "amount": str(g["amount"]), "currency": g["currency"],
                        "remaining": str(g["remaining"]), "reason": g["reason"],
                        "granted_at": g["granted_at"].isoformat(),
                        "expires_at": g["expires_at"].isoformat() if g["expires_at"] else None}
                       for g in grants]}
