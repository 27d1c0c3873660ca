"""Pushing closed invoices to Stripe, idempotently, with stripe-python.

Per tenant: a customer (metadata `tenant_id`) with a $0 monthly subscription that carries
its invoices; per closed invoice: one invoice item per non-zero line (metadata `line_id`,
our rated amount in cents), then a Stripe invoice on the subscription that takes them up.

Every Stripe object we create is first looked for by the id we gave it in its metadata,
and its Stripe id is written to our database right after. A crash between the Stripe call
and that write therefore finds the object on retry instead of creating a second one —
no line is ever charged twice. (Stripe's idempotency keys would do this for 24 h; the
metadata lookup has no horizon, and localstripe, which the tests run against, ignores
keys.) The invoice itself is found through its lines, which carry their items' metadata.
Pushes of one tenant run in order, under a per-tenant lock: a Stripe invoice takes up all
of its customer's pending items.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import stripe

from shared.config import ConfigError, env_optional

log = logging.getLogger(__name__)

Fault = Callable[[str], None]  # called after each Stripe create, before our write (tests)


@dataclass(frozen=True)
class StripeConfig:
    api_key: str
    api_base: str | None = None  # e.g. localstripe's http://127.0.0.1:8420


def stripe_config_from_env(env: Mapping[str, str]) -> StripeConfig | None:
    """None (no Stripe) unless EDGEINFER_STRIPE_API_KEY is set."""
    key = env_optional(env, "EDGEINFER_STRIPE_API_KEY")
    if key is None:
        return None
    if not key.startswith(("sk_", "rk_")):
        raise ConfigError("EDGEINFER_STRIPE_API_KEY must be a Stripe secret or restricted key")
    return StripeConfig(key, env_optional(env, "EDGEINFER_STRIPE_API_BASE"))


def client_for(config: StripeConfig) -> stripe.StripeClient:
    if config.api_base:
        return stripe.StripeClient(config.api_key, base_addresses={"api": config.api_base})
    return stripe.StripeClient(config.api_key)


def cents(amount: Decimal) -> int:
    value = amount * 100
    if value != value.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of cents")
    return int(value)


def _meta(obj: Any, key: str) -> str | None:
    metadata = getattr(obj, "metadata", None)
    return metadata.to_dict().get(key) if metadata is not None else None


class StripePusher:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient,
                 fault: Fault | None = None) -> None:
        self._pool = pool
        self._stripe = client.v1
        self._fault = fault or (lambda step: None)

    async def push_pending(self) -> list[str]:
        """Every closed invoice not yet in Stripe, oldest first; returns the pushed ids."""
        tenants = await self._pool.fetch(
            "SELECT DISTINCT tenant_id FROM metering.invoices WHERE stripe_pushed_at IS NULL")
        pushed = []
        for row in tenants:
            pushed += await self.push_tenant(row["tenant_id"])
        return pushed

    async def push_tenant(self, tenant_id: str) -> list[str]:
        """The tenant's unpushed invoices, oldest first: a Stripe invoice takes up every
        pending item of its customer, so an earlier invoice's items must be invoiced first."""
        async with self._pool.acquire() as lock_conn:
            # Session lock (not a transaction): Stripe calls happen while it is held.
            await lock_conn.execute("SELECT pg_advisory_lock(hashtext('stripe:' || $1))", tenant_id)
            try:
                invoices = await self._pool.fetch(
                    "SELECT * FROM metering.invoices WHERE tenant_id = $1 AND stripe_pushed_at"
                    " IS NULL ORDER BY period_start, currency", tenant_id)
                for invoice in invoices:
                    await self._push_one(invoice)
                return [invoice["id"] for invoice in invoices]
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock(hashtext('stripe:' || $1))",
                                        tenant_id)

    async def _push_one(self, invoice: asyncpg.Record) -> str | None:
        tenant_id, currency = invoice["tenant_id"], invoice["currency"].lower()
        customer = await self._customer(tenant_id)
        subscription = await self._subscription(tenant_id, customer, currency)
        lines = await self._pool.fetch(
            "SELECT * FROM metering.invoice_lines WHERE invoice_id = $1 ORDER BY line_no",
            invoice["id"])
        stripe_invoice = await self._find_invoice(customer, invoice["id"])
        if stripe_invoice is None:
            # Items not yet on an invoice (filtered here: localstripe has no `pending` filter).
            pending = {_meta(item, "line_id"): item for item in await self._call(
                lambda: list(self._stripe.invoice_items.list(
                    params={"customer": customer, "limit": 100}).auto_paging_iter()))
                if not item.invoice}
            for line in lines:
                if line["amount"] == 0 or line["stripe_invoice_item_id"]:
                    continue
                item = pending.get(line["id"])
                if item is None:
                    item = await self._call(lambda line=line: self._stripe.invoice_items.create(
                        params={"customer": customer, "amount": cents(line["amount"]),
                                "currency": currency, "description":
                                f"{invoice['period_start']:%Y-%m} · {line['description']}",
                                "metadata": {"line_id": line["id"], "invoice_id": invoice["id"],
                                             "tenant_id": tenant_id}}))
                    self._fault(f"invoice_item:{line['line_no']}")
                await self._pool.execute("UPDATE metering.invoice_lines SET"
                                         " stripe_invoice_item_id = $1 WHERE id = $2",
                                         item.id, line["id"])
        if stripe_invoice is None and any(line["amount"] != 0 for line in lines):
            created = await self._call(lambda: self._stripe.invoices.create(params={
                "customer": customer, "subscription": subscription,
                "description": f"edgeinfer GPU usage, {invoice['period_start']:%Y-%m}",
                "metadata": {"invoice_id": invoice["id"], "tenant_id": tenant_id}}))
            self._fault("invoice")
            stripe_invoice = created.id
        # No Stripe invoice when every line is zero: nothing to charge.
        await self._pool.execute("UPDATE metering.invoices SET stripe_invoice_id = $1,"
                                 " stripe_pushed_at = now() WHERE id = $2", stripe_invoice,
                                 invoice["id"])
        log.info("invoice %s pushed to Stripe as %s", invoice["id"], stripe_invoice)
        return stripe_invoice

    async def _find_invoice(self, customer: str, invoice_id: str) -> str | None:
        """The Stripe invoice that already took up this invoice's items (their metadata
        travels onto its lines), if an earlier push got that far."""
        def find() -> str | None:
            for candidate in self._stripe.invoices.list(params={"customer": customer})\
                    .auto_paging_iter():
                if any(_meta(line, "invoice_id") == invoice_id for line in candidate.lines.data):
                    return str(candidate.id)
            return None

        return await self._call(find)

    async def _customer(self, tenant_id: str) -> str:
        known = await self._pool.fetchval("SELECT stripe_customer_id FROM metering.billing_accounts"
                                          " WHERE tenant_id = $1", tenant_id)
        if known:
            return str(known)
        # Production Stripe would use customers.search(metadata['tenant_id']); localstripe
        # has no search, so list (fine for a retry path that runs rarely).
        found = await self._call(lambda: next(
            (c for c in self._stripe.customers.list(params={"limit": 100}).auto_paging_iter()
             if _meta(c, "tenant_id") == tenant_id), None))
        if found is None:
            found = await self._call(lambda: self._stripe.customers.create(params={
                "name": tenant_id, "metadata": {"tenant_id": tenant_id}}))
            self._fault("customer")
        await self._pool.execute(
            "INSERT INTO metering.billing_accounts (tenant_id, stripe_customer_id) VALUES ($1, $2)"
            " ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id",
            tenant_id, found.id)
        return str(found.id)

    async def _subscription(self, tenant_id: str, customer: str, currency: str) -> str:
        known = await self._pool.fetchval("SELECT stripe_subscription_id FROM"
                                          " metering.billing_accounts WHERE tenant_id = $1", tenant_id)
        if known:
            return str(known)
        plan_id = f"edgeinfer-usage-{currency}"
        try:
            await self._call(lambda: self._stripe.plans.retrieve(plan_id))
        except stripe.InvalidRequestError:
            await self._call(lambda: self._stripe.plans.create(params={
                "id": plan_id, "amount": 0, "currency": currency, "interval": "month",
                "product": {"name": "edgeinfer GPU usage"}}))
        found = await self._call(lambda: next(
            (s for s in self._stripe.subscriptions.list(params={"customer": customer})
             .auto_paging_iter() if _meta(s, "tenant_id") == tenant_id), None))
        if found is None:
            found = await self._call(lambda: self._stripe.subscriptions.create(params={
                "customer": customer, "items": [{"plan": plan_id}],
                "metadata": {"tenant_id": tenant_id}}))
            self._fault("subscription")
        await self._pool.execute("UPDATE metering.billing_accounts SET stripe_subscription_id = $1"
                                 " WHERE tenant_id = $2", found.id, tenant_id)
        return str(found.id)

    @staticmethod
    async def _call(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)  # stripe-python's client is synchronous here
