"""Rating: a pure function of ledger rows and the price book (no I/O, no clock).

Each hourly row is priced at the unit price in effect at that hour; rows with the same
(deployment, GPU class, region, unit price) form one invoice line, whose amount is
rounded once (shared/money.py). So an invoice is reproducible from the ledger at any time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from edgeinfer.shared.money import gpu_seconds, line_amount


@dataclass(frozen=True)
class UsageRow:
    deployment_id: str
    pop: str
    region: str
    gpu_class: str
    hour: datetime
    gpu_us: int
    requests: int


@dataclass(frozen=True)
class Price:
    gpu_class: str
    region: str
    currency: str
    unit_price: Decimal
    effective_from: datetime


@dataclass(frozen=True)
class InvoiceLine:
    deployment_id: str
    gpu_class: str
    region: str
    currency: str
    unit_price: Decimal
    gpu_us: int
    requests: int
    amount: Decimal

    @property
    def gpu_seconds(self) -> Decimal:
        return gpu_seconds(self.gpu_us)


@dataclass(frozen=True)
class Rated:
    lines: list[InvoiceLine]
    # Usage with no price in effect: shown, never silently billed at zero or dropped.
    unpriced: list[UsageRow]

    def totals(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = defaultdict(Decimal)
        for line in self.lines:
            out[line.currency] += line.amount
        return dict(out)


def price_at(prices: Iterable[Price], gpu_class: str, region: str, when: datetime) -> Price | None:
    best: Price | None = None
    for p in prices:
        if p.gpu_class == gpu_class and p.region == region and p.effective_from <= when and (
                best is None or p.effective_from > best.effective_from):
            best = p
    return best


def rate(rows: Iterable[UsageRow], prices: list[Price]) -> Rated:
    grouped: dict[tuple[str, str, str, str, Decimal], list[UsageRow]] = defaultdict(list)
    unpriced = []
    for row in rows:
        price = price_at(prices, row.gpu_class, row.region, row.hour)
        if price is None:
            unpriced.append(row)
            continue
        grouped[(row.deployment_id, row.gpu_class, row.region, price.currency,
                 price.unit_price)].append(row)
    lines = []
    for (deployment_id, gpu_class, region, currency, unit_price), group in sorted(grouped.items()):
        gpu_us = sum(r.gpu_us for r in group)
        lines.append(InvoiceLine(
            deployment_id=deployment_id, gpu_class=gpu_class, region=region, currency=currency,
            unit_price=unit_price, gpu_us=gpu_us, requests=sum(r.requests for r in group),
            amount=line_amount(gpu_us, unit_price, currency)))
    return Rated(lines, unpriced)
