"""The billing portal: server-rendered pages for tenants (no script needed).

Sign-in takes an API key; the session cookie (encrypted and signed by Litestar, SameSite
strict, HttpOnly) keeps only the key's hash, and every page resolves it again, so a revoked
key or a suspended tenant is signed out at once. Pages read the same functions as the
REST API, so what a tenant sees here is what `/v1/...` answers.
"""

from __future__ import annotations

import csv
import hmac
import io
import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, Router, get, post
from litestar.datastructures import Headers
from litestar.enums import RequestEncodingType
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.params import Body
from litestar.response import Redirect, Template
from litestar.types import ASGIApp, Receive, Scope, Send

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.budgets import BudgetSpec, InvalidBudget
from edgeinfer.services.billing.chart import daily_chart
from edgeinfer.services.billing.service import BillingService
from edgeinfer.shared.auth import hash_api_key
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.money import gpu_seconds
from edgeinfer.shared.periods import month_start, next_month, parse_month
from edgeinfer.shared.tenancy import KeyResolver

TEMPLATES = Path(__file__).parent / "templates"
Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]


class SignedOut(Exception):
    pass


def portal_router(service: BillingService, resolver: KeyResolver,
                  secret: bytes | None = None) -> Router:
    pool = service.pool
    # A fresh key per process unless one is configured: sessions end when metering restarts.
    key = secret or os.urandom(32)
    backends = {secure: ClientSideSessionBackend(config=CookieBackendConfig(
        secret=key, key="edgeinfer_portal", samesite="strict", httponly=True, secure=secure,
        max_age=8 * 3600)) for secure in (False, True)}

    def session_middleware(app: ASGIApp) -> ASGIApp:
        # A plain factory: Litestar deep-copies route layers, and a DefineMiddleware would
        # take the backend's cipher (not copyable) along. The cookie is `Secure` whenever
        # the page was asked for over https (directly, or behind a proxy that says so).
        plain, secure = (SessionMiddleware(app=app, backend=backends[s]) for s in (False, True))

        async def choose(scope: Scope, receive: Receive, send: Send) -> None:
            await (secure if _scheme(scope) == "https" else plain)(scope, receive, send)

        return choose

    async def tenant_of(request: Request[Any, Any, Any]) -> str:
        key_hash = request.session.get("key_hash") if request.session else None
        if not key_hash:
            raise SignedOut
        reply = await resolver.resolve_hash(key_hash)
        if reply.status != "active" or reply.tenant_id is None:
            request.clear_session()
            raise SignedOut
        return reply.tenant_id

    def page(request: Request[Any, Any, Any], name: str, tenant_id: str | None,
             **context: Any) -> Template:
        return Template(template_name=name, context={
            "tenant_id": tenant_id, "csrf_token": csrf_token(request), **context})

    @get("/login", include_in_schema=False)
    async def login_form(request: Request[Any, Any, Any]) -> Template:
        return page(request, "login.html", None)

    @post("/login", include_in_schema=False, status_code=200)
    async def login(request: Request[Any, Any, Any], data: Form) -> Response[Any]:
        check_form(request, data)
        key = data.get("api_key", "").strip()
        reply = await resolver.resolve(key) if key else None
        if reply is None or reply.status != "active":
            why = "that key is suspended" if reply and reply.status == "suspended" else \
                "that API key is unknown or revoked"
            return page(request, "login.html", None, error=f"Could not sign in: {why}.")
        # A new session, with a new form token: nothing from before the sign-in is kept.
        request.set_session({"key_hash": hash_api_key(key), "csrf": secrets.token_urlsafe(32)})
        return Redirect("/portal", status_code=303)

    @post("/logout", include_in_schema=False, status_code=200)
    async def logout(request: Request[Any, Any, Any], data: Form) -> Redirect:
        check_form(request, data)
        request.clear_session()
        return Redirect("/portal/login", status_code=303)

    @get("/", include_in_schema=False)
    async def overview(request: Request[Any, Any, Any]) -> Template:
        tenant_id = await tenant_of(request)
        start = month_start(service.clock.now())
        end = next_month(start)
        preview = await service.invoice_preview(tenant_id, start, end)
        rows = await repo.daily_usage(pool, tenant_id, start, end)
        names = await service.deployment_names(tenant_id)
        days = [start.date() + timedelta(days=i) for i in range((end - start).days)]
        chart = daily_chart([(r["day"], f"{names.get(r['deployment_id'], r['deployment_id'])}"
                                        f" @ {r['pop']}", gpu_seconds(r["gpu_us"])) for r in rows], days)
        total_us = sum(r["gpu_us"] for r in rows)
        spend = " + ".join(f"{amount} {currency}" for currency, amount in preview["totals"].items())
        return page(request, "overview.html", tenant_id, page="overview", preview=preview, chart=chart,
                    period_label=f"{start:%B %Y}", spend=spend or "0.00 USD",
                    gpu_seconds=str(gpu_seconds(total_us)), names=names,
                    requests=sum(r["requests"] for r in rows))

    @get("/invoices", include_in_schema=False)
    async def invoices(request: Request[Any, Any, Any]) -> Template:
        tenant_id = await tenant_of(request)
        rows = await repo.list_invoices(pool, tenant_id)
        return page(request, "invoices.html", tenant_id, page="invoices",
                    invoices=[invoicing.invoice_view(r) for r in rows])

    @get("/invoices/{invoice_id:str}", include_in_schema=False)
    async def invoice(request: Request[Any, Any, Any], invoice_id: str) -> Template:
        tenant_id = await tenant_of(request)
        found = await repo.get_invoice(pool, tenant_id, invoice_id)
        if found is None:
            raise Refusal(404, "invoice_not_found", f"no invoice {invoice_id!r}")
        return page(request, "invoice.html", tenant_id, page="invoices",
                    invoice=invoicing.invoice_view(*found))

    @get("/credits", include_in_schema=False)
    async def credits(request: Request[Any, Any, Any]) -> Template:
        tenant_id = await tenant_of(request)
        return page(request, "credits.html", tenant_id, page="credits",
                    credits=await invoicing.credits_view(pool, tenant_id))

    async def budget_page(request: Request[Any, Any, Any], tenant_id: str,
                          **context: Any) -> Template:
        budget = await service.budgets.view(tenant_id)
        return page(request, "budget.html", tenant_id, page="budget", budget=budget, **context)

    @get("/budget", include_in_schema=False)
    async def budget(request: Request[Any, Any, Any]) -> Template:
        return await budget_page(request, await tenant_of(request))

    @post("/budget", include_in_schema=False, status_code=200)
    async def save_budget(request: Request[Any, Any, Any], data: Form) -> Template:
        tenant_id = await tenant_of(request)
        check_form(request, data)
        try:
            thresholds = [int(t) for t in data.get("thresholds", "").replace(" ", "").split(",") if t]
            spec = BudgetSpec(monthly_limit=data.get("monthly_limit", "").strip(),
                              thresholds=thresholds or [50, 80, 100],
                              hard_stop=data.get("hard_stop") == "on")
            await service.budgets.save(tenant_id, spec)
        except InvalidBudget as exc:
            return await budget_page(request, tenant_id, error=f"Not saved: {exc}.")
        except ValueError:
            return await budget_page(request, tenant_id, error="Thresholds must be whole "
                                     "percentages, e.g. 50, 80, 100.")
        return await budget_page(request, tenant_id, saved=True)

    @get("/usage.csv", include_in_schema=False)
    async def usage_csv(request: Request[Any, Any, Any], month: str | None = None) -> Response[str]:
        """Hourly usage of a month (default: this one), as the ledger holds it."""
        tenant_id = await tenant_of(request)
        try:
            start = parse_month(month) if month else month_start(service.clock.now())
        except ValueError as exc:
            raise Refusal(400, "invalid_month", str(exc)) from None
        rows = await repo.hourly_usage(pool, tenant_id, start, next_month(start))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["hour_utc", "deployment_id", "pop", "region", "gpu_class", "gpu_us",
                         "gpu_seconds", "requests"])
        for r in rows:
            writer.writerow([r["hour"].isoformat(), r["deployment_id"], r["pop"], r["region"],
                             r["gpu_class"], r["gpu_us"], gpu_seconds(r["gpu_us"]), r["requests"]])
        return Response(out.getvalue(), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="usage-{start:%Y-%m}.csv"'})

    def signed_out(request: Request[Any, Any, Any], exc: SignedOut) -> Response[Any]:
        return Redirect("/portal/login", status_code=303)

    return Router("/portal", route_handlers=[login_form, login, logout, overview, invoices,
                                             invoice, credits, budget, save_budget, usage_csv],
                  middleware=[session_middleware], exception_handlers={SignedOut: signed_out},
                  include_in_schema=False)


# --- forms: cross-site request forgery ----------------------------------------------------
# Every form carries a token kept in the (encrypted, signed) session, and a browser's
# Origin, when it sends one, must be this site: a page elsewhere can make a signed-in
# browser post here, but it can neither read the token nor forge the Origin.


def csrf_token(request: Request[Any, Any, Any]) -> str:
    """The session's form token, made on first use (the sign-in page included)."""
    session = _session(request)
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.set_session({**session, "csrf": token})
    return str(token)


def check_form(request: Request[Any, Any, Any], data: dict[str, str]) -> None:
    """Raises a 403 unless the form's token is the session's and the Origin is ours."""
    origin = request.headers.get("origin")
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    if origin is not None and origin != f"{_scheme(request.scope)}://{host}":
        raise Refusal(403, "cross_site_request",
                      f"this form was sent from {origin}, not from this site")
    expected = _session(request).get("csrf")
    if not expected or not hmac.compare_digest(str(expected), data.get("csrf_token", "")):
        raise Refusal(403, "form_expired", "this form is out of date or not from this site: "
                      "reload the page and send it again")


def _session(request: Request[Any, Any, Any]) -> dict[str, Any]:
    session = request.scope.get("session")  # type: ignore[call-overload]
    return session if isinstance(session, dict) else {}


def _scheme(scope: Scope) -> str:
    """https when asked for over TLS, directly or (X-Forwarded-Proto) behind a proxy."""
    forwarded = Headers.from_scope(scope).get("x-forwarded-proto")
    if forwarded:
        return forwarded.split(",")[0].strip().lower()
    return str(scope.get("scheme", "http"))
