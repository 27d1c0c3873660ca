"""Cross-tenant probes on every route, generated from the route table: the API's as it
serves it (`/schema/openapi.json`), the portal's (built from `portal_router`, which the
document leaves out) and the router's. Tenant B asks for tenant A's objects by A's ids and
names, with every method; B gets a 404 (a 401/403 on admin routes), never A's object; and
nothing of A's changes. A route with a path parameter this test has no value for fails it,
so a new route cannot be forgotten."""

from __future__ import annotations

import re
import types
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from litestar import Litestar

from edgeinfer.services.billing.portal import portal_router
from edgeinfer.services.registry.demo_model import sample_digit
from edgeinfer.shared.events import UsageEvent, new_id
from edgeinfer.shared.periods import month_start
from tests.e2e.conftest import Stack, run
from tests.e2e.test_portal import form_token
from tests.seed import record_delivered

pytestmark = pytest.mark.e2e

# The router's routes (its app has no OpenAPI document): method, path.
ROUTER_ROUTES = [("POST", "/v1/deployments/{name}/infer")]


def api_routes(stack: Stack) -> list[tuple[str, str]]:
    doc = httpx.get(f"{stack.api}/schema/openapi.json", timeout=30).json()
    # The document's own pages (/schema/...) hold no tenant data.
    return [(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in {"get", "put", "post", "delete", "patch"}
            and not path.startswith("/schema")]


def portal_routes() -> list[tuple[str, str]]:
    """The portal's route table (its handlers are only built here, never called)."""
    app = Litestar([portal_router(types.SimpleNamespace(pool=None), None, b"x" * 32)])  # type: ignore[arg-type]
    return [(method, re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)) for route in app.routes
            for method in getattr(route, "methods", ()) if method not in {"HEAD", "OPTIONS"}
            and route.path.startswith("/portal")]


def admin(stack: Stack, method: str, path: str, json: Any = None) -> httpx.Response:
    return httpx.request(method, f"{stack.api}{path}", json=json, timeout=30,
                         headers={"Authorization": f"Bearer {stack.ready['admin_token']}"})


def snapshot(stack: Stack, a_key: str, values: dict[str, str]) -> dict[str, Any]:
    """Everything of A's that a probe could change, as A sees it."""
    def get(path: str) -> Any:
        resp = httpx.get(f"{stack.api}{path}", headers=stack.auth(a_key), timeout=30)
        assert resp.status_code == 200, (path, resp.text)
        return resp.json()

    tenants = admin(stack, "GET", "/admin/tenants").json()
    return {"deployments": get("/v1/deployments"), "invoices": get("/v1/invoices"),
            "invoice": get(f"/v1/invoices/{values['invoice_id']}"), "credits": get("/v1/credits"),
            "budget": get("/v1/budget"),
            "tenant": [t for t in tenants if t["id"] == values["tenant_id"]]}


@pytest.fixture(scope="module")
def two_tenants(stack: Stack, stack_database: str) -> dict[str, Any]:
    """A (the demo tenant) with one of every object; B with a key and nothing else."""
    a = stack.ready["tenant_id"]
    last_month = month_start(month_start(datetime.now(UTC)) - timedelta(days=1))
    at = last_month + timedelta(days=3)
    run(_seed(stack_database, UsageEvent(
        id=new_id(), source="test", time=at, tenant_id=a, request_id=new_id(),
        deployment_id=stack.ready["deployment_id"], model_version="1", runner_id="r-probe",
        pop="eu-west", region="eu-west", gpu_class="cpu", gpu_share=Decimal(1),
        busy_us=10**9, gpu_us=10**9, started_at=at, ended_at=at + timedelta(seconds=1000))))
    closed = admin(stack, "POST", "/admin/invoices/close", {"period": f"{last_month:%Y-%m}"})
    assert closed.status_code == 200, closed.text
    mine = httpx.get(f"{stack.api}/v1/invoices", headers=stack.auth(), timeout=30).json()
    invoice_id = mine["invoices"][0]["id"]
    assert admin(stack, "POST", f"/admin/tenants/{a}/credits",
                 {"amount": "1.00", "reason": "probe"}).status_code == 201
    a_key = admin(stack, "POST", f"/admin/tenants/{a}/keys", {}).json()
    assert httpx.put(f"{stack.api}/v1/budget", headers=stack.auth(), timeout=30, json={
        "monthly_limit": "40", "currency": "USD", "thresholds": [50]}).status_code == 200
    b = admin(stack, "POST", "/admin/tenants", {"name": "probe-b"}).json()
    b_key = admin(stack, "POST", f"/admin/tenants/{b['id']}/keys", {}).json()["key"]
    values = {"name": "digits", "model": "digits", "version": "1", "invoice_id": invoice_id,
              "tenant_id": a, "key_id": a_key["id"]}
    return {"a_key": a_key["key"], "b_key": b_key, "values": values}


async def _seed(database_url: str, event: UsageEvent) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await record_delivered(conn, [event])
    finally:
        await conn.close()


def fill(path: str, values: dict[str, str]) -> str:
    missing = set(re.findall(r"\{(\w+)\}", path)) - set(values)
    assert not missing, f"{path}: no probe value for {missing}; add one to two_tenants()"
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def leaks(resp: httpx.Response, secrets_of_a: list[str]) -> list[str]:
    """A's identifiers in the answer, beyond those B itself put in the URL (echoed in a 404's
    sentence, which tells B nothing new)."""
    return [s for s in secrets_of_a if s in resp.text and s not in str(resp.request.url)]


def portal_session(stack: Stack, key: str) -> httpx.Client:
    browser = httpx.Client(base_url=stack.api, timeout=30, headers={"Origin": stack.api})
    token = form_token(browser.get("/portal/login"))
    assert browser.post("/portal/login", data={"api_key": key, "csrf_token": token}
                        ).status_code == 303
    return browser


def test_tenant_b_never_reaches_tenant_a(stack: Stack, two_tenants: dict[str, Any]) -> None:
    values, b_key = two_tenants["values"], two_tenants["b_key"]
    secrets_of_a = [values["invoice_id"], values["tenant_id"], stack.ready["deployment_id"],
                    values["key_id"]]
    before = snapshot(stack, two_tenants["a_key"], values)
    routes = api_routes(stack)
    assert ("GET", "/v1/invoices/{invoice_id}") in routes and len(routes) > 15, routes
    probed = []
    for method, path in routes:
        if "{" not in path and method == "GET" and path.startswith("/v1"):
            # A list or a tenant's own page: none of A's objects in it.
            resp = httpx.get(f"{stack.api}{path}", headers=stack.auth(b_key), timeout=30)
            assert resp.status_code in (200, 404), (path, resp.text)
        elif "{" not in path:
            continue  # no id to probe with; the admin test covers admin routes without ids
        else:
            resp = httpx.request(method, f"{stack.api}{fill(path, values)}", timeout=30,
                                 headers=stack.auth(b_key), json={})
            expected = {401, 403} if path.startswith("/admin") else {404, 400, 422}
            assert resp.status_code in expected, (method, path, resp.status_code, resp.text)
        assert not leaks(resp, secrets_of_a), (method, path, resp.text)
        probed.append((method, path))

    browser = portal_session(stack, b_key)
    try:
        token = form_token(browser.get("/portal/budget"))
        for method, path in portal_routes():
            if method != "GET" or path in {"/portal/login"}:
                continue
            resp = browser.get(fill(path, values))
            assert resp.status_code in ((404,) if "{" in path else (200,)), (path, resp.status_code)
            assert not leaks(resp, secrets_of_a), (path, resp.text[:300])
            probed.append(("portal " + method, path))
        assert browser.post("/portal/logout", data={"csrf_token": token}).status_code == 303
    finally:
        browser.close()

    for method, path in ROUTER_ROUTES:
        resp = httpx.request(method, f"{stack.router}{fill(path, values)}", timeout=30,
                             headers=stack.auth(b_key), json={"inputs": [sample_digit(1)]})
        assert resp.status_code == 404, resp.text
        assert not leaks(resp, secrets_of_a), resp.text
        probed.append(("router " + method, path))

    assert snapshot(stack, two_tenants["a_key"], values) == before  # nothing of A's changed
    assert any(p == "/portal/invoices/{invoice_id}" for _, p in probed), probed
    print(f"\n{len(probed)} routes probed as tenant B with tenant A's ids: " +
          ", ".join(f"{m} {p}" for m, p in probed))
