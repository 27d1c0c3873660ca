"""The billing portal in headless Chromium (Debian's, driven by Playwright): a tenant signs
in with its API key and sees what the ledger holds — this month's spend and GPU-seconds,
the daily chart, a closed invoice with an adjustment and a credit, its budget (set through
the form) and a CSV export that adds up to the ledger. Screenshots land in
`test-artifacts/` at the repository root."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from edgeinfer.services.registry.demo_model import sample_digit
from edgeinfer.shared.events import UsageEvent, new_id
from edgeinfer.shared.periods import month_start
from tests.e2e.conftest import Stack, run
from tests.seed import record_delivered

pytestmark = pytest.mark.e2e

METRICS_TOKEN = "metrics-" + "x" * 24
STACK_ENV = {"EDGEINFER_METRICS_TOKEN": METRICS_TOKEN}

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAST_MONTH = month_start(month_start(datetime.now(UTC)) - timedelta(days=1))
HOUR_US = 3_600 * 1_000_000


async def seed_last_month(database_url: str, tenant_id: str, deployment_id: str) -> None:
    """Usage of last month, straight into the ledger (as the consumer would write it),
    delivered."""
    conn = await asyncpg.connect(database_url)
    try:
        await record_delivered(conn, [UsageEvent(
                id=new_id(), source="test", time=at, tenant_id=tenant_id, request_id=new_id(),
                deployment_id=deployment_id, model_version="1", runner_id="r-old", pop="eu-west",
                region="eu-west", gpu_class="cpu", gpu_share=Decimal(1), busy_us=HOUR_US,
                gpu_us=HOUR_US, started_at=at, ended_at=at + timedelta(hours=1))
                for at in (LAST_MONTH + timedelta(days=2), LAST_MONTH + timedelta(days=3))])
    finally:
        await conn.close()


async def ledger_this_month(database_url: str, tenant_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(gpu_us), 0)::bigint AS us, coalesce(sum(requests), 0)::bigint AS n"
            " FROM metering.usage_hourly WHERE tenant_id = $1 AND hour >= $2", tenant_id,
            month_start(datetime.now(UTC)))
        return int(row["us"]), int(row["n"])
    finally:
        await conn.close()


def admin(stack: Stack, method: str, path: str, json: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.api}/admin{path}", json=json, timeout=30,
                         headers={"Authorization": f"Bearer {stack.ready['admin_token']}"})


def test_a_tenant_sees_its_ledger_in_the_portal(stack: Stack, stack_database: str,
                                                chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    tenant_id = stack.ready["tenant_id"]
    for i in range(12):  # this month's usage, through the router and a real runner
        resp = httpx.post(f"{stack.router}/v1/deployments/digits/infer", headers=stack.auth(),
                          json={"inputs": [sample_digit(i % 10)]}, timeout=60)
        assert resp.status_code == 200, resp.text
    run(seed_last_month(stack_database, tenant_id, stack.ready["deployment_id"]))
    grant = admin(stack, "POST", f"/tenants/{tenant_id}/credits",
                  {"amount": "0.50", "reason": "welcome credit"})
    assert grant.status_code == 201, grant.text
    closed = admin(stack, "POST", "/invoices/close", {"period": f"{LAST_MONTH:%Y-%m}"})
    assert closed.status_code == 200 and len(closed.json()["invoices"]) == 1, closed.text
    # Wait until the ledger holds every request this month (the outbox lingers briefly).
    for _ in range(100):
        gpu_us, requests = run(ledger_this_month(stack_database, tenant_id))
        if requests >= 12:
            break
        run(asyncio.sleep(0.2))
    assert requests >= 12
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        # A bad key is refused with a reason; the real one signs in.
        page.goto(f"{stack.api}/portal")
        assert page.url.endswith("/portal/login")
        page.fill("#api_key", "sk_wrong")
        page.click("#sign-in")
        assert "unknown or revoked" in page.inner_text("#error")
        page.fill("#api_key", stack.key)
        page.click("#sign-in")
        page.wait_for_selector("#spend")

        # Overview: GPU-seconds and requests equal the ledger; spend equals the API preview.
        preview = httpx.get(f"{stack.api}/v1/invoices/preview", headers=stack.auth(),
                            timeout=30).json()
        assert page.inner_text("#gpu-seconds") == str(Decimal(gpu_us).scaleb(-6))
        assert page.inner_text("#requests") == str(requests)
        assert page.inner_text("#spend") == " + ".join(
            f"{amount} {currency}" for currency, amount in preview["totals"].items())
        assert page.locator("#daily-chart rect").count() >= 1
        assert "digits @ " in page.inner_text(".legend")
        assert "digits" in page.inner_text("#lines")  # deployments by name, not id
        page.screenshot(path=str(ARTIFACTS / "portal-overview.png"), full_page=True)

        # Invoices: last month closed, with its usage line and the credit applied.
        page.click("text=Invoices")
        page.click(f"text={LAST_MONTH:%Y-%m}")
        lines = page.inner_text("#invoice-lines")
        assert "prepaid credit" in lines and "usage" in lines
        assert page.inner_text("#total") == "0.22 USD"  # 2 GPU-hours × $0.36/h − $0.50 credit
        page.screenshot(path=str(ARTIFACTS / "portal-invoice.png"), full_page=True)
        page.click("text=Credits")
        assert "welcome credit" in page.inner_text("#grants")
        assert "0.00" in page.inner_text("#grants")  # all of it used by that invoice

        # Budget: a bad limit is refused on the page; a good one is saved and shown.
        page.click("text=Budget")
        page.fill("#monthly_limit", "-5")
        page.click("#save-budget")
        assert "must be" in page.inner_text("#error")
        page.fill("#monthly_limit", "25.00")
        page.fill("#thresholds", "50, 90")
        page.click("#save-budget")
        page.wait_for_selector("#saved")
        budget = httpx.get(f"{stack.api}/v1/budget", headers=stack.auth(), timeout=30).json()
        assert (budget["monthly_limit"], budget["thresholds"]) == ("25", [50, 90])

        # CSV export: the hourly rows add up to the ledger.
        with page.expect_download() as download:
            page.click("text=Usage CSV")
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert sum(int(r["gpu_us"]) for r in rows) == gpu_us
        assert sum(int(r["requests"]) for r in rows) == requests

        # Signing out ends the session.
        page.click("text=Sign out")
        page.goto(f"{stack.api}/portal/invoices")
        assert page.url.endswith("/portal/login")
        browser.close()


def form_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def test_forms_refuse_other_sites_and_missing_tokens(stack: Stack) -> None:
    """A page elsewhere can make a signed-in browser post here, with its cookie: without the
    form's token, or with another site's Origin, nothing changes (403)."""
    with httpx.Client(base_url=stack.api, timeout=30) as browser:
        signed_out = form_token(browser.get("/portal/login"))
        assert browser.post("/portal/login", data={"api_key": stack.key}).status_code == 403
        signed_in = browser.post("/portal/login", data={"api_key": stack.key,
                                                        "csrf_token": signed_out})
        assert signed_in.status_code == 303, signed_in.text
        token = form_token(browser.get("/portal/budget"))
        assert token != signed_out  # a new one with the session
        before = httpx.get(f"{stack.api}/v1/budget", headers=stack.auth(), timeout=30).json()
        forged = {"monthly_limit": "0.01", "thresholds": "100", "hard_stop": "on"}
        missing = browser.post("/portal/budget", data=forged)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "form_expired"
        elsewhere = browser.post("/portal/budget", data={**forged, "csrf_token": token},
                                 headers={"Origin": "https://evil.example"})
        assert elsewhere.status_code == 403
        assert elsewhere.json()["error"]["code"] == "cross_site_request"
        after = httpx.get(f"{stack.api}/v1/budget", headers=stack.auth(), timeout=30).json()
        assert after == before
        # The same form from this site, with its token, is saved.
        ours = browser.post("/portal/budget", data={"monthly_limit": "30", "thresholds": "50",
                                                    "csrf_token": token},
                            headers={"Origin": stack.api})
        assert ours.status_code == 200 and 'id="saved"' in ours.text
        assert browser.post("/portal/logout", data={}).status_code == 403  # no token
        assert browser.post("/portal/logout", data={"csrf_token": token}).status_code == 303


def test_the_session_cookie_is_secure_behind_https(stack: Stack) -> None:
    plain = httpx.get(f"{stack.api}/portal/login", timeout=30)
    behind_tls = httpx.get(f"{stack.api}/portal/login", headers={"X-Forwarded-Proto": "https"},
                           timeout=30)
    assert "secure" not in plain.headers["set-cookie"].lower()
    cookie = behind_tls.headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_metrics_need_the_scrapers_token_when_one_is_set(stack: Stack) -> None:
    for base in (stack.api, stack.router):
        assert httpx.get(f"{base}/metrics", timeout=30).status_code == 401
        assert httpx.get(f"{base}/metrics", headers=stack.auth(), timeout=30).status_code == 401
        scraped = httpx.get(f"{base}/metrics", timeout=30,
                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert scraped.status_code == 200 and "# TYPE" in scraped.text
