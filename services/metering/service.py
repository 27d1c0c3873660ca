"""Metering and billing (merged: docs/decisions/0001-billing-inside-metering.md).

Owns schema `metering`: the usage ledger, hourly aggregates and the price book. Consumes
the `USAGE` stream; serves the tenant's usage and invoice preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
from litestar import Router, delete, get, put
from litestar.params import Parameter
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from services.metering import billing_routes, invoicing, ledger
from services.metering.budgets import Budget, BudgetSpec
from services.metering.budgets import decide as decide_budget
from services.metering.consumer import ConsumerConfig, UsageConsumer, consumer_config_from_env
from services.metering.invoicing import month_start, next_month, rated_usage
from services.metering.rating import Rated
from services.metering.reconcile import RunnerBalance, reconcile
from services.metering.stripe_push import StripePusher, client_for, stripe_config_from_env
from shared.bus import decode_or_warn, request
from shared.config import env_float
from shared.events import BudgetAlert, BudgetState, ListDeploymentsReply, encode, heartbeat_decoder, new_id
from shared.http import Refusal, admin_guard
from shared.money import gpu_seconds, parse_price
from shared.subjects import Subjects
from shared.tenancy import KeyResolver, Tenant, tenant_provider

log = logging.getLogger(__name__)


def parse_period(from_: str | None, to: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) from ISO-8601 query values; defaults to the current calendar month (UTC)."""
    def parse(name: str, value: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Refusal(400, "invalid_period", f"{name}={value!r} is not an ISO-8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    start = parse("from", from_) if from_ else month_start(now)
    end = parse("to", to) if to else next_month(month_start(now))
    if end <= start:
        raise Refusal(400, "invalid_period", "'to' must be after 'from'")
    if end - start > timedelta(days=400):
        raise Refusal(400, "invalid_period", "a period is at most 400 days")
    return start, end


UNRECONCILED = Gauge("edgeinfer_metering_unreconciled_runners",
                     "Runners whose reported charges and the ledger have differed for longer"
                     " than the grace period (usage lost or counted twice).")


class MeteringService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 consumer_config: ConsumerConfig | None = None,
                 reconcile_grace_s: float | None = None) -> None:
        self._pool = pool
        self._nc = nc
        self._subjects = subjects
        self.consumer = UsageConsumer(pool, nc, subjects,
                                      consumer_config or consumer_config_from_env())
        self._grace_s = (reconcile_grace_s if reconcile_grace_s is not None else
                         env_float(os.environ, "EDGEINFER_RECONCILE_GRACE_S", 120.0, lo=1, hi=86400))
        self._reported: dict[str, int] = {}
        self._open_since: dict[str, float] = {}
        self.balances: list[RunnerBalance] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._budget_wake = asyncio.Event()
        self._close_grace_s = env_float(os.environ, "EDGEINFER_INVOICE_CLOSE_GRACE_S", 3600.0,
                                        lo=0, hi=31 * 86400)

    async def start(self) -> None:
        await self._nc.subscribe(self._subjects.heartbeat_wildcard, cb=self._on_heartbeat)
        self._tasks = [asyncio.create_task(self.consumer.run(), name="usage-consumer"),
                       asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                       asyncio.create_task(self._budget_loop(), name="budgets"),
                       asyncio.create_task(self._invoice_loop(), name="invoices")]
        stripe_config = stripe_config_from_env(os.environ)
        if stripe_config is not None:
            pusher = StripePusher(self._pool, client_for(stripe_config))
            self._tasks.append(asyncio.create_task(self._stripe_loop(pusher), name="stripe"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is not None:
            self._reported[beat.runner_id] = beat.counters.charged_us

    async def reconcile_now(self, now: float) -> list[RunnerBalance]:
        reported = dict(self._reported)
        rows = await self._pool.fetch(
            "SELECT runner_id, sum(gpu_us)::bigint AS us FROM metering.usage_events"
            " WHERE runner_id = ANY($1::text[]) GROUP BY runner_id", list(reported))
        self.balances = reconcile(reported, {r["runner_id"]: r["us"] for r in rows},
                                  self._open_since, now, self._grace_s)
        self._open_since = {b.runner_id: b.open_since for b in self.balances
                            if b.open_since is not None}
        UNRECONCILED.set(sum(b.alert for b in self.balances))
        for b in self.balances:
            if b.alert:
                log.error("runner %s: reported %d µs charged, ledger holds %d µs, for %.0f s",
                          b.runner_id, b.reported_us, b.ledger_us, now - (b.open_since or now))
        return self.balances

    async def _rated(self, tenant_id: str, start: datetime, end: datetime) -> Rated:
        return await rated_usage(self._pool, tenant_id, start, end)

    async def accrued_spend(self, tenant_id: str, currency: str, period: datetime) -> Decimal:
        """The period's spend in `currency`, exact (budgets react before rounding shows)."""
        rated = await self._rated(tenant_id, period, next_month(period))
        return sum((line.gpu_seconds * line.unit_price for line in rated.lines
                    if line.currency == currency), Decimal(0))

    async def evaluate_budgets(self, now: datetime) -> None:
        """Alerts for crossed thresholds (each once per period) and the hard-stop state,
        published for the routers on every round, so a restarted router learns it."""
        period = month_start(now)
        for row in await self._pool.fetch("SELECT * FROM metering.budgets"):
            budget = Budget(row["tenant_id"], row["monthly_limit"], row["currency"],
                            tuple(row["thresholds"]), row["hard_stop"])
            spend = await self.accrued_spend(budget.tenant_id, budget.currency, period)
            alerted = [r["threshold"] for r in await self._pool.fetch(
                "SELECT threshold FROM metering.budget_alerts WHERE tenant_id = $1"
                " AND period_start = $2", budget.tenant_id, period)]
            decision = decide_budget(budget, spend, alerted)
            for threshold in decision.new_alerts:
                inserted = await self._pool.fetchval(
                    "INSERT INTO metering.budget_alerts (tenant_id, period_start, threshold, spend)"
                    " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING threshold",
                    budget.tenant_id, period, threshold, spend)
                if inserted is not None:  # first time this month: tell whoever listens
                    log.warning("tenant %s crossed %d%% of its %s %s monthly budget",
                                budget.tenant_id, threshold, budget.monthly_limit, budget.currency)
                    await self._nc.publish(self._subjects.budget_alert(budget.tenant_id), encode(
                        BudgetAlert(id=new_id(), source="metering", time=datetime.now(UTC),
                                    tenant_id=budget.tenant_id, period_start=period,
                                    threshold_pct=threshold, spend=spend,
                                    monthly_limit=budget.monthly_limit, currency=budget.currency)))
            reason = (f"monthly limit of {budget.monthly_limit.normalize():f} {budget.currency}"
                      f" reached ({decision.used_pct:.0f}% used)")
            await self._publish_budget(budget.tenant_id, decision.blocked, reason)

    async def _publish_budget(self, tenant_id: str, blocked: bool, reason: str) -> None:
        await self._nc.publish(self._subjects.budget(tenant_id), encode(BudgetState(
            id=new_id(), source="metering", time=datetime.now(UTC), tenant_id=tenant_id,
            blocked=blocked, reason=reason if blocked else "")))

    async def _budget_loop(self) -> None:
        while True:
            try:
                await self.evaluate_budgets(datetime.now(UTC))
            except Exception as exc:  # the database restarting: try again next round
                log.warning("budget evaluation failed: %s", exc)
            self._budget_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._budget_wake.wait(), timeout=2.0)

    async def _invoice_loop(self) -> None:
        """Close last month once it is over and late events had the grace period to land
        (a runner's outbox retrying within JetStream's duplicate window); idempotent."""
        while True:
            now = datetime.now(UTC)
            this_month = month_start(now)
            if (now - this_month).total_seconds() >= self._close_grace_s:
                last_month = month_start(this_month - timedelta(days=1))
                try:
                    report = await invoicing.close_month(self._pool, last_month)
                    if report.invoices or report.blocked:
                        log.info("closed %s: %d invoices; not closed: %s", report.period,
                                 len(report.invoices), report.blocked or "none")
                except Exception as exc:  # the database restarting: try again next round
                    log.warning("closing invoices failed: %s", exc)
            await asyncio.sleep(600)

    async def _stripe_loop(self, pusher: StripePusher) -> None:
        while True:
            try:
                pushed = await pusher.push_pending()
                if pushed:
                    log.info("pushed %d invoice(s) to Stripe", len(pushed))
            except Exception as exc:  # Stripe or the database unreachable: retry, same ids
                log.warning("pushing invoices to Stripe failed: %s", exc)
            await asyncio.sleep(60)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            try:
                await self.reconcile_now(time.monotonic())
            except Exception as exc:  # the database restarting: try again next round
                log.warning("reconciliation failed: %s", exc)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        js = self._nc.jetstream()
        info = await js.stream_info(self._subjects.usage_dead_letter_stream)
        out: list[dict[str, Any]] = []
        seq = max(info.state.first_seq, info.state.last_seq - limit + 1)
        while info.state.messages and seq <= info.state.last_seq and len(out) < limit:
            try:
                msg = await js.get_msg(self._subjects.usage_dead_letter_stream, seq)
            except NotFoundError:  # deleted by the stream's limits
                seq += 1
                continue
            headers = msg.headers or {}
            out.append({"seq": seq, "time": msg.time.isoformat() if msg.time else None,
                        "reason": headers.get("Edgeinfer-Dead-Reason", ""),
                        "subject": headers.get("Edgeinfer-Original-Subject", ""),
                        "payload": (msg.data or b"")[:2000].decode(errors="replace")})
            seq += 1
        return out

    def admin_router(self, admin_token: str) -> Router:
        service = self

        @get("/reconciliation", operation_id="admin_reconciliation")
        async def reconciliation() -> dict[str, Any]:
            balances = await service.reconcile_now(time.monotonic())
            return {"grace_s": service._grace_s,
                    "alerts": sum(b.alert for b in balances),
                    "runners": [{"runner_id": b.runner_id, "reported_us": b.reported_us,
                                 "ledger_us": b.ledger_us, "difference_us": b.difference_us,
                                 "alert": b.alert} for b in balances]}

        @get("/dead-letters", operation_id="admin_dead_letters")
        async def dead_letters(limit: int = 100) -> dict[str, Any]:
            """Usage messages metering refused, with why: never dropped silently."""
            return {"messages": await service.dead_letters(min(max(limit, 1), 1000))}

        return Router("/admin", route_handlers=[reconciliation, dead_letters,
                                                *billing_routes.admin_routes(service._pool)],
                      guards=[admin_guard(admin_token)],
                      tags=["admin"])

    async def invoice_preview(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        rated = await self._rated(tenant_id, start, end)
        return {
            "period": {"from": start.isoformat(), "to": end.isoformat()},
            "status": "preview",
            "lines": [{"deployment_id": line.deployment_id, "gpu_class": line.gpu_class,
                       "region": line.region, "gpu_seconds": str(line.gpu_seconds),
                       "requests": line.requests, "unit_price": str(line.unit_price),
                       "currency": line.currency, "amount": str(line.amount)}
                      for line in rated.lines],
            "unpriced": [{"deployment_id": r.deployment_id, "gpu_class": r.gpu_class,
                          "region": r.region, "hour": r.hour.isoformat(),
                          "gpu_seconds": str(gpu_seconds(r.gpu_us))} for r in rated.unpriced],
            "totals": {currency: str(amount) for currency, amount in rated.totals().items()},
            "rounding": "each line rounded once to the cent, half-even",
        }

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def deployment_names(self, tenant_id: str) -> dict[str, str]:
        """Deployment id → name, from the registry (names are what tenants know)."""
        try:
            reply = await request(self._nc, self._subjects.list_deployments, msgspec.Struct(),
                                  ListDeploymentsReply, timeout=2.0)
        except Exception as exc:  # the registry is down: show ids rather than fail the page
            log.warning("deployment names unavailable: %s", exc)
            return {}
        return {d.id: d.name for d in reply.deployments if d.tenant_id == tenant_id}

    async def budget_view(self, tenant_id: str) -> dict[str, Any]:
        pool = self._pool
        row = await pool.fetchrow("SELECT * FROM metering.budgets WHERE tenant_id = $1",
                                  tenant_id)
        if row is None:
            raise Refusal(404, "no_budget", "no budget is set; PUT /v1/budget to set one")
        period = month_start(datetime.now(UTC))
        spend = await self.accrued_spend(tenant_id, row["currency"], period)
        alerts = await pool.fetch(
            "SELECT threshold, crossed_at FROM metering.budget_alerts WHERE tenant_id = $1"
            " AND period_start = $2 ORDER BY threshold", tenant_id, period)
        return {"monthly_limit": str(row["monthly_limit"].normalize()),
                "currency": row["currency"], "thresholds": list(row["thresholds"]),
                "hard_stop": row["hard_stop"], "period_start": period.isoformat(),
                "spend": str(spend), "blocked": row["hard_stop"] and spend >= row["monthly_limit"],
                "alerts": [{"threshold": a["threshold"], "crossed_at": a["crossed_at"].isoformat()}
                           for a in alerts]}

    async def save_budget(self, tenant_id: str, data: BudgetSpec) -> None:
        try:
            limit = parse_price(data.monthly_limit)
        except ValueError as exc:
            raise Refusal(400, "invalid_limit", str(exc)) from None
        if limit <= 0 or not re.fullmatch(r"[A-Z]{3}", data.currency) or not all(
                1 <= t <= 1000 for t in data.thresholds):
            raise Refusal(400, "invalid_budget", "need monthly_limit > 0, a 3-letter "
                          "currency code and thresholds in [1; 1000] percent")
        await self._pool.execute(
            "INSERT INTO metering.budgets (tenant_id, monthly_limit, currency, thresholds,"
            " hard_stop) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET"
            " monthly_limit = excluded.monthly_limit, currency = excluded.currency,"
            " thresholds = excluded.thresholds, hard_stop = excluded.hard_stop,"
            " updated_at = now()", tenant_id, limit, data.currency,
            sorted(set(data.thresholds)), data.hard_stop)
        self._budget_wake.set()

    async def delete_budget(self, tenant_id: str) -> None:
        await self._pool.execute("DELETE FROM metering.budgets WHERE tenant_id = $1", tenant_id)
        await self._publish_budget(tenant_id, False, "")  # lift any hard stop at once

    def router(self, resolver: KeyResolver) -> Router:
        service = self
        pool = self._pool

        @get("/usage", operation_id="get_usage")
        async def usage(tenant: Tenant,
                        from_: str | None = Parameter(query="from", default=None),
                        to: str | None = None) -> dict[str, Any]:
            start, end = parse_period(from_, to, datetime.now(UTC))
            rows = await ledger.usage_by_deployment(pool, tenant.id, start, end)
            total_us = sum(r["gpu_us"] for r in rows)
            return {
                "period": {"from": start.isoformat(), "to": end.isoformat()},
                "items": [{"deployment_id": r["deployment_id"], "pop": r["pop"],
                           "region": r["region"], "gpu_class": r["gpu_class"],
                           "gpu_us": r["gpu_us"], "gpu_seconds": str(gpu_seconds(r["gpu_us"])),
                           "requests": r["requests"]} for r in rows],
                "total_gpu_us": total_us,
                "total_gpu_seconds": str(gpu_seconds(total_us)),
            }

        @get("/invoices/preview", operation_id="preview_invoice")
        async def preview(tenant: Tenant,
                          from_: str | None = Parameter(query="from", default=None),
                          to: str | None = None) -> dict[str, Any]:
            start, end = parse_period(from_, to, datetime.now(UTC))
            return await service.invoice_preview(tenant.id, start, end)

        @get("/budget", operation_id="get_budget")
        async def get_budget(tenant: Tenant) -> dict[str, Any]:
            return await service.budget_view(tenant.id)

        @put("/budget", operation_id="put_budget")
        async def put_budget(tenant: Tenant, data: BudgetSpec) -> dict[str, Any]:
            await service.save_budget(tenant.id, data)
            return await service.budget_view(tenant.id)

        @delete("/budget", operation_id="delete_budget", status_code=200)
        async def delete_budget(tenant: Tenant) -> dict[str, Any]:
            await service.delete_budget(tenant.id)
            return {"deleted": True}

        return Router("/v1", route_handlers=[usage, preview, get_budget, put_budget, delete_budget,
                                             *billing_routes.tenant_routes(pool)],
                      dependencies={"tenant": tenant_provider(resolver)}, tags=["metering"])
