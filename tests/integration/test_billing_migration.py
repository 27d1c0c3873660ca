"""billing/0001 moves billing's tables out of `metering` on a database that already holds
invoices, credits and budgets, and tenants see exactly what they saw before.

The data in tests/golden/previous_layout/ was made by the previous layout's own code
(commit 0987991: usage recorded through the ledger, August and September closed by
`close_month`, an adjustment for late usage, a free tier, two credit grants, budgets and an
alert, two invoices marked as pushed to Stripe), and `tenant_views.json` is what that code
answered each tenant: invoices, invoice details, credits, October's preview, usage.
"""

from __future__ import annotations

import json
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.service import BillingService
from edgeinfer.services.metering import ledger
from edgeinfer.shared.db import MIGRATIONS_DIR, discover, migrate
from tests.conftest import with_database

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "previous_layout"
MOVED = ("price_book", "budgets", "budget_alerts", "billing_accounts", "credit_grants",
         "invoices", "invoice_lines")
AUG = datetime(2026, 8, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)


def previous_layout(tmp: Path) -> Path:
    """migrations/ as it was before billing had a schema: no billing/, metering up to 0004."""
    for m in discover():
        if m.schema == "billing" or (m.schema == "metering" and m.version > 4):
            continue
        (tmp / m.schema).mkdir(exist_ok=True)
        name = f"{m.version:04d}_{m.name}.sql"
        shutil.copy(MIGRATIONS_DIR / m.schema / name, tmp / m.schema / name)
    return tmp


async def table(conn: asyncpg.Connection, name: str) -> list[dict[str, Any]]:
    return json.loads(await conn.fetchval(
        f"SELECT coalesce(json_agg(x ORDER BY x), '[]') FROM {name} x"))


async def test_billing_tables_move_with_their_data_and_tenants_see_the_same(
        server_database_url: str, tmp_path: Path) -> None:
    database = "edgeinfer_test_" + secrets.token_hex(4)
    admin = await asyncpg.connect(server_database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = with_database(server_database_url, database)
    try:
        await migrate(url, previous_layout(tmp_path))
        before = json.loads((GOLDEN / "metering_tables.json").read_text())
        conn = await asyncpg.connect(url)
        try:
            # The seed's price book is the same rows the dump holds: load the dump over it.
            await conn.execute("DELETE FROM metering.price_book")
            for name in ("usage_events", "usage_hourly", *MOVED):
                await conn.execute(
                    f"INSERT INTO metering.{name} SELECT * FROM"
                    f" json_populate_recordset(NULL::metering.{name}, $1::json)",
                    json.dumps(before[name]))
        finally:
            await conn.close()

        applied = [(m.schema, m.version) for m in await migrate(url)]
        assert ("billing", 1) in applied and ("metering", 5) in applied, applied

        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        assert pool is not None
        try:
            async with pool.acquire() as conn:
                for name in MOVED:
                    assert await table(conn, f"billing.{name}") == before[name], name
                    assert await conn.fetchval("SELECT to_regclass($1)", f"metering.{name}") is None
                for name in ("usage_events", "usage_hourly"):
                    # Unchanged in every column they had; what metering/0006 added says
                    # that all of it was delivered (it was billed as it came).
                    rows = await table(conn, f"metering.{name}")
                    assert [{k: r[k] for k in before[name][0]} for r in rows] == before[name], name
                    assert all(r.get("outcome", "delivered") == "delivered" for r in rows)
                    assert all(r["delivered_gpu_us"] == r["gpu_us"] and r["undelivered_gpu_us"] == 0
                               for r in rows if name == "usage_hourly")
            assert await tenant_views(pool) == json.loads((GOLDEN / "tenant_views.json").read_text())
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def tenant_views(pool: asyncpg.Pool) -> dict[str, Any]:
    """What each tenant is answered, gathered as the previous layout's golden was."""
    billing = BillingService(pool, nc=None, subjects=None)  # type: ignore[arg-type]
    seen: dict[str, Any] = {}
    for tenant in ("ten_alpha", "ten_beta"):
        invoices = await repo.list_invoices(pool, tenant)
        details = []
        for row in invoices:
            found = await repo.get_invoice(pool, tenant, row["id"])
            assert found is not None
            details.append(invoicing.invoice_view(*found))
        preview = await billing.invoice_preview(tenant, OCT, NOV)
        # The one wording that changed on purpose: lines round to each currency's minor unit
        # (whole yen for JPY), no longer "to the cent" for every currency.
        assert preview.pop("rounding") == "each line rounded once to the currency's minor unit, half-even"
        preview["rounding"] = "each line rounded once to the cent, half-even"
        seen[tenant] = {
            "invoices": [invoicing.invoice_view(r) for r in invoices],
            "invoice_details": details,
            "credits": await invoicing.credits_view(pool, tenant),
            "preview_oct": preview,
            # The columns the previous layout answered (the outcome split came later).
            "usage_all": [{k: r[k] for k in ("deployment_id", "pop", "region", "gpu_class",
                                             "gpu_us", "requests")}
                          for r in await ledger.usage_by_deployment(pool, tenant, AUG, NOV)],
        }
    return json.loads(json.dumps(seen, sort_keys=True, default=str))
