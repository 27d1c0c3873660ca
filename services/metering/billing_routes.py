"""HTTP routes for invoices, credits, free tier and the price book (tenant and admin).

Money crosses the API as decimal strings ("12.50"); a JSON number is refused, because a
float cannot hold a price exactly.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from litestar import get, post, put
from litestar.handlers import HTTPRouteHandler

from services.metering import invoicing
from shared.http import Refusal
from shared.money import parse_price
from shared.tenancy import Tenant

_CURRENCY = re.compile(r"^[A-Z]{3}$")


class CloseRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    period: str  # "2026-10"


class CreditSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount: str
    reason: str
    currency: str = "USD"
    expires_at: datetime | None = None


class BillingAccountSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    free_tier_monthly: str = "0"
    currency: str = "USD"


class PriceSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gpu_class: str
    region: str
    unit_price: str  # per GPU-second
    effective_from: datetime
    currency: str = "USD"


def _amount(text: str, field: str, *, positive: bool, places: int = 2) -> Decimal:
    try:
        value = parse_price(text)
    except ValueError as exc:
        raise Refusal(400, "invalid_amount", f"{field}: {exc}") from None
    if positive and value <= 0:
        raise Refusal(400, "invalid_amount", f"{field} must be greater than zero")
    if -value.as_tuple().exponent > places:  # type: ignore[operator]
        raise Refusal(400, "invalid_amount", f"{field} has more than {places} decimal places")
    return value


def _currency(code: str) -> str:
    if not _CURRENCY.match(code):
        raise Refusal(400, "invalid_currency", f"currency {code!r} must be a 3-letter ISO code")
    return code


def tenant_routes(pool: asyncpg.Pool) -> list[HTTPRouteHandler]:
    @get("/invoices", operation_id="list_invoices")
    async def list_invoices(tenant: Tenant) -> dict[str, Any]:
        """Closed monthly invoices, newest first (the current month: /v1/invoices/preview)."""
        rows = await invoicing.list_invoices(pool, tenant.id)
        return {"invoices": [invoicing.invoice_view(r) for r in rows]}

    @get("/invoices/{invoice_id:str}", operation_id="get_invoice")
    async def get_invoice(tenant: Tenant, invoice_id: str) -> dict[str, Any]:
        found = await invoicing.get_invoice(pool, tenant.id, invoice_id)
        if found is None:
            raise Refusal(404, "invoice_not_found", f"no invoice {invoice_id!r}")
        return invoicing.invoice_view(*found)

    @get("/credits", operation_id="list_credits")
    async def list_credits(tenant: Tenant) -> dict[str, Any]:
        return await invoicing.credits_view(pool, tenant.id)

    return [list_invoices, get_invoice, list_credits]


def admin_routes(pool: asyncpg.Pool) -> list[HTTPRouteHandler]:
    @post("/invoices/close", operation_id="admin_close_invoices", status_code=200)
    async def close(data: CloseRequest) -> dict[str, Any]:
        """Close a month for every tenant (idempotent). Metering also does this by itself
        once a month has ended and EDGEINFER_INVOICE_CLOSE_GRACE_S has passed."""
        try:
            start = invoicing.parse_month(data.period)
        except ValueError as exc:
            raise Refusal(400, "invalid_period", str(exc)) from None
        if invoicing.next_month(start) > datetime.now(UTC):
            raise Refusal(409, "period_open", f"{data.period} has not ended yet")
        report = await invoicing.close_month(pool, start)
        return {"period": report.period, "invoices": report.invoices,
                "already_closed": report.already_closed, "blocked": report.blocked}

    @post("/tenants/{tenant_id:str}/credits", operation_id="admin_grant_credit")
    async def grant_credit(tenant_id: str, data: CreditSpec) -> dict[str, Any]:
        amount = _amount(data.amount, "amount", positive=True)
        if not data.reason.strip():
            raise Refusal(400, "invalid_credit", "say why the credit is granted (reason)")
        grant_id = "crd_" + secrets.token_hex(16)
        await pool.execute(
            "INSERT INTO metering.credit_grants (id, tenant_id, currency, amount, reason,"
            " expires_at) VALUES ($1, $2, $3, $4, $5, $6)", grant_id, tenant_id,
            _currency(data.currency), amount, data.reason.strip(), data.expires_at)
        return {"id": grant_id, "tenant_id": tenant_id, "amount": str(amount),
                "currency": data.currency}

    @put("/tenants/{tenant_id:str}/billing", operation_id="admin_put_billing_account")
    async def put_billing_account(tenant_id: str, data: BillingAccountSpec) -> dict[str, Any]:
        free = _amount(data.free_tier_monthly, "free_tier_monthly", positive=False)
        await pool.execute(
            "INSERT INTO metering.billing_accounts (tenant_id, free_tier_monthly, currency)"
            " VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO UPDATE SET"
            " free_tier_monthly = excluded.free_tier_monthly, currency = excluded.currency,"
            " updated_at = now()", tenant_id, free, _currency(data.currency))
        return {"tenant_id": tenant_id, "free_tier_monthly": str(free), "currency": data.currency}

    @get("/prices", operation_id="admin_list_prices")
    async def list_prices() -> dict[str, Any]:
        rows = await pool.fetch("SELECT * FROM metering.price_book"
                                " ORDER BY gpu_class, region, effective_from")
        return {"prices": [{"gpu_class": r["gpu_class"], "region": r["region"],
                            "currency": r["currency"], "unit_price": str(r["unit_price"].normalize()),
                            "effective_from": r["effective_from"].isoformat()} for r in rows]}

    @post("/prices", operation_id="admin_add_price")
    async def add_price(data: PriceSpec) -> dict[str, Any]:
        """A new price from a future instant: never backdated, so closed invoices and
        the usage already rated stay as they were billed."""
        price = _amount(data.unit_price, "unit_price", positive=False, places=10)
        if data.effective_from.tzinfo is None:
            raise Refusal(400, "invalid_price", "effective_from needs a time zone, e.g. ...Z")
        if data.effective_from <= datetime.now(UTC):
            raise Refusal(400, "price_backdated", "effective_from must be in the future")
        try:
            await pool.execute(
                "INSERT INTO metering.price_book (gpu_class, region, currency, unit_price,"
                " effective_from) VALUES ($1, $2, $3, $4, $5)", data.gpu_class, data.region,
                _currency(data.currency), price, data.effective_from)
        except asyncpg.UniqueViolationError:
            raise Refusal(409, "price_exists", "a price for that class and region already "
                          "starts at that instant") from None
        return {"gpu_class": data.gpu_class, "region": data.region, "currency": data.currency,
                "unit_price": str(price), "effective_from": data.effective_from.isoformat()}

    return [close, grant_credit, put_billing_account, list_prices, add_price]
