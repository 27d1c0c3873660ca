"""Closed invoices pushed to Stripe (localstripe on loopback, started here; never a live
key): the Stripe invoice carries exactly our lines, and a crash right after any Stripe
call — before our database recorded it — never creates a second charge on retry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.config import StripeConfig
from edgeinfer.services.billing.stripe_push import StripePusher, client_for
from edgeinfer.shared.embedded import free_port, wait_for_port
from tests.integration.test_invoicing import HOUR_US, event, record

AUG = datetime(2026, 8, 1, tzinfo=UTC)


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "localstripe"), "--port", str(port),
             "--from-scratch"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def crash_once_at(step: str):
    state = {"crashed": False}

    def fault(at: str) -> None:
        if at == step and not state["crashed"]:
            state["crashed"] = True
            raise Crash(f"killed after Stripe created {at}, before our database knew")

    return fault


@pytest.mark.parametrize("crash_at", ["customer", "subscription", "invoice_item:2", "invoice"])
async def test_a_crash_after_any_stripe_call_never_charges_twice(
        pool: asyncpg.Pool, namespace: str, localstripe: str, crash_at: str) -> None:
    tenant = f"ten_{namespace}"
    await record(pool, event(tenant, AUG + timedelta(days=2), 3 * HOUR_US),
                 event(tenant, AUG + timedelta(days=5), HOUR_US, pop="us-east"),
                 event(tenant, AUG + timedelta(days=6), HOUR_US, deployment="dep_b"))
    await invoicing.close_month(pool, AUG)
    (invoice_id,) = [r["id"] for r in await repo.list_invoices(pool, tenant)]
    _, lines = await repo.get_invoice(pool, tenant, invoice_id)  # type: ignore[misc]
    client = client_for(StripeConfig("sk_test_edgeinfer", localstripe))

    with pytest.raises(Crash):
        await StripePusher(pool, client, fault=crash_once_at(crash_at)).push_tenant(tenant)
    await StripePusher(pool, client).push_tenant(tenant)  # the retry after the crash
    await StripePusher(pool, client).push_tenant(tenant)  # and a later pass: nothing to do

    row = await pool.fetchrow("SELECT a.stripe_customer_id, i.stripe_invoice_id, i.total FROM"
                              " billing.invoices i JOIN billing.billing_accounts a USING"
                              " (tenant_id) WHERE i.id = $1", invoice_id)
    customers = [c for c in client.v1.customers.list(params={"limit": 100}).auto_paging_iter()
                 if c.metadata.to_dict().get("tenant_id") == tenant]
    assert [c.id for c in customers] == [row["stripe_customer_id"]]
    # The Stripe invoice holds each of our non-zero lines exactly once, and nothing is left
    # pending that a later Stripe invoice would charge again.
    stripe_invoice = client.v1.invoices.retrieve(row["stripe_invoice_id"])
    billed = [ln.metadata.to_dict().get("line_id") for ln in stripe_invoice.lines.data
              if ln.type == "invoiceitem"]
    assert sorted(billed) == [ln["id"] for ln in lines if ln["amount"]]
    assert [i for i in client.v1.invoice_items.list(params={
        "customer": row["stripe_customer_id"]}).auto_paging_iter() if not i.invoice] == []
    assert stripe_invoice.total == int(row["total"] * 100) == 108 + 32 + 36
    charged = [i.id for i in client.v1.invoices.list(
        params={"customer": row["stripe_customer_id"]}).auto_paging_iter() if i.total]
    assert charged == [row["stripe_invoice_id"]]


def test_live_keys_are_never_needed() -> None:
    from edgeinfer.services.billing.config import stripe_config_from_env
    from edgeinfer.shared.config import ConfigError

    assert stripe_config_from_env({}) is None
    with pytest.raises(ConfigError):
        stripe_config_from_env({"EDGEINFER_STRIPE_API_KEY": "pk_live_publishable"})


async def test_zero_decimal_currencies_are_pushed_in_their_own_minor_unit(
        pool: asyncpg.Pool, namespace: str, localstripe: str) -> None:
    """180 JPY is 180 to Stripe (yen have no minor unit), not 18,000."""
    tenant, region = f"ten_{namespace}", f"tokyo-{namespace}"
    # 0.05 JPY per GPU-second: one GPU-hour is 180 JPY, exactly.
    assert await repo.add_price(pool, "cpu", region, "JPY", Decimal("0.05"),
                                datetime(2026, 1, 1, tzinfo=UTC))
    await record(pool, event(tenant, AUG + timedelta(days=3), HOUR_US, pop=region))
    await invoicing.close_month(pool, AUG)
    (invoice,) = await repo.list_invoices(pool, tenant)
    assert (invoice["currency"], invoice["total"]) == ("JPY", Decimal("180"))

    client = client_for(StripeConfig("sk_test_edgeinfer", localstripe))
    await StripePusher(pool, client).push_tenant(tenant)
    (pushed,) = await repo.list_invoices(pool, tenant)
    stripe_invoice = client.v1.invoices.retrieve(pushed["stripe_invoice_id"])
    assert (stripe_invoice.currency, stripe_invoice.total) == ("jpy", 180)
