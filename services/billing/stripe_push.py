"""Pushing closed invoices to Stripe, idempotently, with stripe-python.

Per tenant: a customer (metadata `tenant_id`) with a $0 monthly subscription that carries
its invoices; per closed invoice: one invoice item per non-zero line (metadata `line_id`,
our rated amount in the currency's minor unit: cents, or whole yen), then a Stripe
invoice on the subscription that takes them up.

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
from collections.abc import Callable
from typing import Any

import asyncpg
import stripe

from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.config import StripeConfig
from edgeinfer.shared.money import to_minor_units

log = logging.getLogger(__name__)

Fault = Callable[[str], None]  # called after each Stripe create, before our write (tests)


def client_for(config: StripeConfig) -> stripe.StripeClient:
    if config.api_base:
        return stripe.StripeClient(config.api_key, base_addresses={"api": config.api_base})
    return stripe.StripeClient(config.api_key)


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
        pushed = []
        for tenant_id in await repo.tenants_with_unpushed_invoices(self._pool):
            pushed += await self.push_tenant(tenant_id)
        return pushed

    async def push_tenant(self, tenant_id: str) -> list[str]:
        """The tenant's unpushed invoices, oldest first: a Stripe invoice takes up every
        pending item of its customer, so an earlier invoice's items must be invoiced first."""
        async with self._pool.acquire() as lock_conn:
            await repo.lock_stripe_pushes(lock_conn, tenant_id)
            try:
                invoices = await repo.unpushed_invoices(self._pool, tenant_id)
                for invoice in invoices:
                    await self._push_one(invoice)
                return [invoice["id"] for invoice in invoices]
            finally:
                await repo.unlock_stripe_pushes(lock_conn, tenant_id)

    async def _push_one(self, invoice: asyncpg.Record) -> str | None:
        tenant_id, currency = invoice["tenant_id"], invoice["currency"]
        customer = await self._customer(tenant_id)
        subscription = await self._subscription(tenant_id, customer, currency.lower())
        lines = await repo.invoice_lines(self._pool, invoice["id"])
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
                        params={"customer": customer,
                                "amount": to_minor_units(line["amount"], currency),
                                "currency": currency.lower(), "description":
                                f"{invoice['period_start']:%Y-%m} · {line['description']}",
                                "metadata": {"line_id": line["id"], "invoice_id": invoice["id"],
                                             "tenant_id": tenant_id}}))
                    self._fault(f"invoice_item:{line['line_no']}")
                await repo.set_line_stripe_item(self._pool, line["id"], item.id)
        if stripe_invoice is None and any(line["amount"] != 0 for line in lines):
            created = await self._call(lambda: self._stripe.invoices.create(params={
                "customer": customer, "subscription": subscription,
                "description": f"edgeinfer GPU usage, {invoice['period_start']:%Y-%m}",
                "metadata": {"invoice_id": invoice["id"], "tenant_id": tenant_id}}))
            self._fault("invoice")
            stripe_invoice = created.id
        # No Stripe invoice when every line is zero: nothing to charge.
        await repo.mark_invoice_pushed(self._pool, invoice["id"], stripe_invoice)
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
        account = await repo.billing_account(self._pool, tenant_id)
        if account is not None and account["stripe_customer_id"]:
            return str(account["stripe_customer_id"])
        # Production Stripe would use customers.search(metadata['tenant_id']); localstripe
        # has no search, so list (fine for a retry path that runs rarely).
        found = await self._call(lambda: next(
            (c for c in self._stripe.customers.list(params={"limit": 100}).auto_paging_iter()
             if _meta(c, "tenant_id") == tenant_id), None))
        if found is None:
            found = await self._call(lambda: self._stripe.customers.create(params={
                "name": tenant_id, "metadata": {"tenant_id": tenant_id}}))
            self._fault("customer")
        await repo.set_stripe_customer(self._pool, tenant_id, found.id)
        return str(found.id)

    async def _subscription(self, tenant_id: str, customer: str, currency: str) -> str:
        account = await repo.billing_account(self._pool, tenant_id)
        if account is not None and account["stripe_subscription_id"]:
            return str(account["stripe_subscription_id"])
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
        await repo.set_stripe_subscription(self._pool, tenant_id, found.id)
        return str(found.id)

    @staticmethod
    async def _call(fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(fn)  # stripe-python's client is synchronous here
