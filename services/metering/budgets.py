"""Budgets: which alerts a tenant's spend has crossed, and whether to stop it — pure.

Spend here is the exact accrued amount (GPU-seconds × unit price, no rounding), so a
budget reacts before rounding would show a cent; invoices still round once per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import msgspec


class BudgetSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    monthly_limit: str  # a decimal amount as a string: money is never a float
    currency: str = "USD"
    thresholds: list[int] = msgspec.field(default_factory=lambda: [50, 80, 100])
    hard_stop: bool = False


@dataclass(frozen=True)
class Budget:
    tenant_id: str
    monthly_limit: Decimal
    currency: str
    thresholds: tuple[int, ...]
    hard_stop: bool


@dataclass(frozen=True)
class BudgetDecision:
    new_alerts: tuple[int, ...]  # thresholds (percent) crossed and not yet alerted this period
    blocked: bool
    used_pct: Decimal


def decide(budget: Budget, spend: Decimal, alerted: Iterable[int]) -> BudgetDecision:
    used_pct = spend / budget.monthly_limit * 100
    done = set(alerted)
    crossed = tuple(t for t in sorted(budget.thresholds) if used_pct >= t and t not in done)
    return BudgetDecision(crossed, budget.hard_stop and spend >= budget.monthly_limit, used_pct)
