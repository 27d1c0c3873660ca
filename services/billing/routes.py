"""Billing's HTTP routes: invoices, credits, the invoice preview and budgets (tenant), and
closing months, credits, free tier and the price book (admin).

Handlers parse, call billing's functions and map the result; SQL is in repository.py.
Money crosses the API as decimal strings ("12.50"); a JSON number is refused, because a
float cannot hold a price exactly.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Router, delete, get, post, put
from litestar.params import Parameter

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.budgets import BudgetSpec, InvalidBudget
from edgeinfer.services.billing.service import BillingService
from edgeinfer.shared.http import Refusal, admin_guard
from edgeinfer.shared.money import CURRENCY_DECIMALS, check_currency, parse_price
from edgeinfer.shared.periods import next_month, parse_month, parse_period
from edgeinfer.shared.tenancy import KeyResolver, Tenant, tenant_provider


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


def _currency(code: str) -> str:
    try:
        return check_currency(code)
    except ValueError as exc:
        raise Refusal(400, "invalid_currency", str(exc)) from None


def _amount(text: str, field: str, currency: str, *, positive: bool,
            places: int | None = None) -> Decimal:
    """A decimal amount, at most `places` decimals (default: the currency's minor unit)."""
    places = CURRENCY_DECIMALS[_currency(currency)] if places is None else places
    try:
        value = parse_price(text)
    except ValueError as exc:
        raise Refusal(400, "invalid_amount", f"{field}: {exc}") from None
    if positive and value <= 0:
        raise Refusal(400, "invalid_amount", f"{field} must be greater than zero")
    if -value.as_tuple().exponent > places:  # type: ignore[operator]
        raise Refusal(400, "invalid_amount", f"{field} has more than {places} decimal places"
                      f" ({currency})")
    return value


def tenant_router(service: BillingService, resolver: KeyResolver) -> Router:
    pool = service.pool

    @get("/invoices", operation_id="list_invoices")
    async def list_invoices(tenant: Tenant) -> dict[str, Any]:
        """Closed monthly invoices, newest first (the current month: /v1/invoices/preview)."""
        rows = await repo.list_invoices(pool, tenant.id)
        return {"invoices": [invoicing.invoice_view(r) for r in rows]}

    @get("/invoices/preview", operation_id="preview_invoice")
    async def preview(tenant: Tenant,
                      from_: str | None = Parameter(query="from", default=None),
                      to: str | None = None) -> dict[str, Any]:
        """The period (default: this month) priced from the price book, not yet closed."""
        start, end = parse_period(from_, to, service.clock.now())
        return await service.invoice_preview(tenant.id, start, end)

    @get("/invoices/{invoice_id:str}", operation_id="get_invoice")
    async def get_invoice(tenant: Tenant, invoice_id: str) -> dict[str, Any]:
        found = await repo.get_invoice(pool, tenant.id, invoice_id)
        if found is None:
            raise Refusal(404, "invoice_not_found", f"no invoice {invoice_id!r}")
        return invoicing.invoice_view(*found)

    @get("/credits", operation_id="list_credits")
    async def list_credits(tenant: Tenant) -> dict[str, Any]:
        return await invoicing.credits_view(pool, tenant.id)

    async def budget_view(tenant_id: str) -> dict[str, Any]:
        view = await service.budgets.view(tenant_id)
        if view is None:
            raise Refusal(404, "no_budget", "no budget is set; PUT /v1/budget to set one")
        return view

    @get("/budget", operation_id="get_budget")
    async def get_budget(tenant: Tenant) -> dict[str, Any]:
        return await budget_view(tenant.id)

    @put("/budget", operation_id="put_budget")
    async def put_budget(tenant: Tenant, data: BudgetSpec) -> dict[str, Any]:
        try:
            await service.budgets.save(tenant.id, data)
        except InvalidBudget as exc:
            raise Refusal(400, "invalid_budget", str(exc)) from None
        return await budget_view(tenant.id)

    @delete("/budget", operation_id="delete_budget", status_code=200)
    async def delete_budget(tenant: Tenant) -> dict[str, Any]:
        await service.budgets.delete(tenant.id)
        return {"deleted": True}

    return Router("/v1", route_handlers=[list_invoices, preview, get_invoice, list_credits,
                                         get_budget, put_budget, delete_budget],
                  dependencies={"tenant": tenant_provider(resolver)}, tags=["billing"])


def admin_router(service: BillingService, admin_token: str) -> Router:
    pool = service.pool

    @post("/invoices/close", operation_id="admin_close_invoices", status_code=200)
    async def close(data: CloseRequest) -> dict[str, Any]:
        """Close a month for every tenant (idempotent). Billing also does this by itself
        once a month has ended and EDGEINFER_INVOICE_CLOSE_GRACE_S has passed."""
        try:
            start = parse_month(data.period)
        except ValueError as exc:
            raise Refusal(400, "invalid_period", str(exc)) from None
        if next_month(start) > service.clock.now():
            raise Refusal(409, "period_open", f"{data.period} has not ended yet")
        report = await invoicing.close_month(pool, start)
        return {"period": report.period, "invoices": report.invoices,
                "already_closed": report.already_closed, "blocked": report.blocked}

    @post("/tenants/{tenant_id:str}/credits", operation_id="admin_grant_credit")
    async def grant_credit(tenant_id: str, data: CreditSpec, idempotency_key: str | None =
                           Parameter(header="Idempotency-Key", default=None)) -> dict[str, Any]:
        """With an Idempotency-Key, the grant's id comes from it: a retry — even one after
        a crash that lost the first answer — grants once (money is never granted twice)."""
        amount = _amount(data.amount, "amount", data.currency, positive=True)
        if not data.reason.strip():
            raise Refusal(400, "invalid_credit", "say why the credit is granted (reason)")
        grant_id = "crd_" + (secrets.token_hex(16) if idempotency_key is None else hashlib.sha256(
            f"{tenant_id}\0{idempotency_key}".encode()).hexdigest()[:32])
        granted = await repo.insert_credit_grant(pool, grant_id, tenant_id, data.currency, amount,
                                                 data.reason.strip(), data.expires_at)
        if not granted:
            raise Refusal(422, "idempotency_key_reused", "a credit with this Idempotency-Key "
                          "was granted with other terms; use a new key for a new credit")
        return {"id": grant_id, "tenant_id": tenant_id, "amount": str(amount),
                "currency": data.currency}

    @put("/tenants/{tenant_id:str}/billing", operation_id="admin_put_billing_account")
    async def put_billing_account(tenant_id: str, data: BillingAccountSpec) -> dict[str, Any]:
        free = _amount(data.free_tier_monthly, "free_tier_monthly", data.currency, positive=False)
        await repo.save_billing_account(pool, tenant_id, free, data.currency)
        return {"tenant_id": tenant_id, "free_tier_monthly": str(free), "currency": data.currency}

    @get("/prices", operation_id="admin_list_prices")
    async def list_prices() -> dict[str, Any]:
        return {"prices": [{"gpu_class": r["gpu_class"], "region": r["region"],
                            "currency": r["currency"], "unit_price": str(r["unit_price"].normalize()),
                            "effective_from": r["effective_from"].isoformat()}
                           for r in await repo.price_book(pool)]}

    @post("/prices", operation_id="admin_add_price")
    async def add_price(data: PriceSpec) -> dict[str, Any]:
        """A new price from a future instant: never backdated, so closed invoices and
        the usage already rated stay as they were billed."""
        price = _amount(data.unit_price, "unit_price", data.currency, positive=False, places=10)
        if data.effective_from.tzinfo is None:
            raise Refusal(400, "invalid_price", "effective_from needs a time zone, e.g. ...Z")
        if data.effective_from <= service.clock.now():
            raise Refusal(400, "price_backdated", "effective_from must be in the future")
        if not await repo.add_price(pool, data.gpu_class, data.region, data.currency, price,
                                    data.effective_from):
            raise Refusal(409, "price_exists", "a price for that class and region already "
                          "starts at that instant")
        return {"gpu_class": data.gpu_class, "region": data.region, "currency": data.currency,
                "unit_price": str(price), "effective_from": data.effective_from.isoformat()}

    return Router("/admin", route_handlers=[close, grant_credit, put_billing_account, list_prices,
                                            add_price],
                  guards=[admin_guard(admin_token)], tags=["admin"])
