"""Budgets, the I/O around budgets.py: spend from the rated ledger, alerts stored once per
threshold and month, and the hard-stop state published for the routers on every round
(so a restarted router learns it)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from edgeinfer.services.billing import repository as repo
from edgeinfer.services.billing.budgets import Budget, BudgetSpec, budget_from_spec, decide
from edgeinfer.services.billing.invoicing import rated_usage
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.events import BudgetAlert, BudgetState, encode, new_id
from edgeinfer.shared.periods import month_start, next_month
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)


class BudgetKeeper:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects, clock: Clock) -> None:
        self._pool = pool
        self._nc = nc
        self._subjects = subjects
        self._clock = clock
        self.changed = asyncio.Event()  # a tenant saved a budget: evaluate now, not next round

    async def accrued_spend(self, tenant_id: str, currency: str, period: datetime) -> Decimal:
        """The period's spend in `currency`, exact (budgets react before rounding shows)."""
        rated = await rated_usage(self._pool, tenant_id, period, next_month(period))
        return sum((line.gpu_seconds * line.unit_price for line in rated.lines
                    if line.currency == currency), Decimal(0))

    async def evaluate_all(self, now: datetime) -> None:
        period = month_start(now)
        for row in await repo.all_budgets(self._pool):
            budget = Budget(row["tenant_id"], row["monthly_limit"], row["currency"],
                            tuple(row["thresholds"]), row["hard_stop"])
            spend = await self.accrued_spend(budget.tenant_id, budget.currency, period)
            alerted = [a["threshold"] for a in await repo.budget_alerts(
                self._pool, budget.tenant_id, period)]
            decision = decide(budget, spend, alerted)
            for threshold in decision.new_alerts:
                if await repo.record_budget_alert(self._pool, budget.tenant_id, period,
                                                  threshold, spend):
                    log.warning("tenant %s crossed %d%% of its %s %s monthly budget",
                                budget.tenant_id, threshold, budget.monthly_limit, budget.currency)
                    await self._nc.publish(self._subjects.budget_alert(budget.tenant_id), encode(
                        BudgetAlert(id=new_id(), source="billing", time=self._clock.now(),
                                    tenant_id=budget.tenant_id, period_start=period,
                                    threshold_pct=threshold, spend=spend,
                                    monthly_limit=budget.monthly_limit, currency=budget.currency)))
            reason = (f"monthly limit of {budget.monthly_limit.normalize():f} {budget.currency}"
                      f" reached ({decision.used_pct:.0f}% used)")
            await self._publish_state(budget.tenant_id, decision.blocked, reason)

    async def view(self, tenant_id: str) -> dict[str, Any] | None:
        row = await repo.budget(self._pool, tenant_id)
        if row is None:
            return None
        period = month_start(self._clock.now())
        spend = await self.accrued_spend(tenant_id, row["currency"], period)
        alerts = await repo.budget_alerts(self._pool, tenant_id, period)
        return {"monthly_limit": str(row["monthly_limit"].normalize()),
                "currency": row["currency"], "thresholds": list(row["thresholds"]),
                "hard_stop": row["hard_stop"], "period_start": period.isoformat(),
                "spend": str(spend), "blocked": row["hard_stop"] and spend >= row["monthly_limit"],
                "alerts": [{"threshold": a["threshold"], "crossed_at": a["crossed_at"].isoformat()}
                           for a in alerts]}

    async def save(self, tenant_id: str, spec: BudgetSpec) -> None:
        """Raises InvalidBudget with what to change."""
        budget = budget_from_spec(tenant_id, spec)
        await repo.save_budget(self._pool, tenant_id, budget.monthly_limit, budget.currency,
                               budget.thresholds, budget.hard_stop)
        self.changed.set()
        # The billing process's loop may be another process (`api` saves, `billing` keeps):
        # wake it too. Lost, it costs only a wait until its next round.
        await self._nc.publish(self._subjects.budget_saved, tenant_id.encode())

    async def delete(self, tenant_id: str) -> None:
        await repo.delete_budget(self._pool, tenant_id)
        await self._publish_state(tenant_id, False, "")  # lift any hard stop at once

    async def _publish_state(self, tenant_id: str, blocked: bool, reason: str) -> None:
        await self._nc.publish(self._subjects.budget(tenant_id), encode(BudgetState(
            id=new_id(), source="billing", time=self._clock.now(), tenant_id=tenant_id,
            blocked=blocked, reason=reason if blocked else "")))
