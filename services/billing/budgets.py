"""Budgets: which alerts a tenant's spend has crossed, and whether to stop it — pure.

Spend here is the exact accrued amount (GPU-seconds × unit price, no rounding), so a
budget reacts before rounding would show a cent; invoices still round once per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from edgeinfer.shared.money import check_currency, parse_price


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


class InvalidBudget(ValueError):
    """The message says which field is wrong and what is allowed."""


def budget_from_spec(tenant_id: str, spec: BudgetSpec) -> Budget:
    try:
        limit = parse_price(spec.monthly_limit)
        currency = check_currency(spec.currency)
    except ValueError as exc:
        raise InvalidBudget(str(exc)) from None
    if limit <= 0:
        raise InvalidBudget("monthly_limit must be greater than zero")
    if not spec.thresholds or not all(1 <= t <= 1000 for t in spec.thresholds):
        raise InvalidBudget("thresholds are whole percentages in [1; 1000], at least one")
    return Budget(tenant_id, limit, currency, tuple(sorted(set(spec.thresholds))), spec.hard_stop)
