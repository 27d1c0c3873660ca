"""Billing: money out. Rates the usage metering recorded, closes months into invoices,
applies free tier and credits, keeps budgets, pushes invoices to Stripe and serves the
portal. Owns schema `billing`; reads usage only through `metering.billable_usage_hourly`.

The loops here are the shell: they read the clock, call the invoicing and budget code,
and log what came back; a failed round (the database restarting, Stripe unreachable) is
logged and tried again on the next one, with the same ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from edgeinfer.services.billing import invoicing
from edgeinfer.services.billing.budgeting import BudgetKeeper
from edgeinfer.services.billing.config import BillingConfig
from edgeinfer.services.billing.invoicing import rated_usage
from edgeinfer.services.billing.stripe_push import StripePusher, client_for
from edgeinfer.shared.bus import request
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import ListDeploymentsReply
from edgeinfer.shared.money import gpu_seconds
from edgeinfer.shared.periods import month_start
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)

STEP_FAILURES = Counter("edgeinfer_billing_step_failures",
                        "Rounds of a billing loop that failed (tried again next round), by loop: "
                        "budget evaluation, closing invoices, pushing invoices to Stripe.",
                        ["step"])


class BillingService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 config: BillingConfig | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.pool = pool
        self.config = config or BillingConfig()
        self.clock = clock
        self.budgets = BudgetKeeper(pool, nc, subjects, clock)
        self._nc = nc
        self._subjects = subjects
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        c = self.config
        self._subscription = await self._nc.subscribe(
            self._subjects.budget_saved, cb=self._on_budget_saved)
        self._tasks = [
            asyncio.create_task(self._every(c.budget_interval_s, "budget evaluation",
                                            self._evaluate_budgets, wake=self.budgets.changed),
                                name="budgets"),
            asyncio.create_task(self._every(c.invoice_check_interval_s, "closing invoices",
                                            self.close_last_month), name="invoices")]
        if c.stripe is not None:
            pusher = StripePusher(self.pool, client_for(c.stripe))
            self._tasks.append(asyncio.create_task(
                self._every(c.stripe_interval_s, "pushing invoices to Stripe",
                            lambda: self._push(pusher)), name="stripe"))

    async def _on_budget_saved(self, msg: Msg) -> None:
        self.budgets.changed.set()

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(self, interval_s: float, what: str, step: Callable[[], Awaitable[None]],
                     wake: asyncio.Event | None = None) -> None:
        while True:
            try:
                await step()
            except Exception as exc:  # the database or Stripe away: next round, same ids
                log.warning("%s failed: %s", what, exc)
                STEP_FAILURES.labels(what).inc()
            if wake is None:
                await asyncio.sleep(interval_s)
                continue
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval_s)

    async def _evaluate_budgets(self) -> None:
        await self.budgets.evaluate_all(self.clock.now())

    async def close_last_month(self) -> None:
        """Close last month once it is over and late events had the grace period to land;
        idempotent, and a month already closed for everyone costs one lookup."""
        now = self.clock.now()
        this_month = month_start(now)
        if (now - this_month).total_seconds() < self.config.invoice_close_grace_s:
            return
        report = await invoicing.close_month_once(self.pool, month_start(this_month - timedelta(days=1)))
        if report is not None and (report.invoices or report.blocked):
            log.info("closed %s: %d invoices; not closed: %s", report.period,
                     len(report.invoices), report.blocked or "none")

    @staticmethod
    async def _push(pusher: StripePusher) -> None:
        pushed = await pusher.push_pending()
        if pushed:
            log.info("pushed %d invoice(s) to Stripe", len(pushed))

    async def invoice_preview(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        rated = await rated_usage(self.pool, tenant_id, start, end)
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
            "rounding": "each line rounded once to the currency's minor unit, half-even",
        }

    async def deployment_names(self, tenant_id: str) -> dict[str, str]:
        """Deployment id → name, from the registry (names are what tenants know)."""
        try:
            reply = await request(self._nc, self._subjects.list_deployments, msgspec.Struct(),
                                  ListDeploymentsReply, timeout=2.0)
        except Exception as exc:  # the registry is down: show ids rather than fail the page
            log.warning("deployment names unavailable: %s", exc)
            return {}
        return {d.id: d.name for d in reply.deployments if d.tenant_id == tenant_id}
