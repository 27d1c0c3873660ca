"""Composing a month's invoice: a pure function of rated usage, what earlier invoices
billed, the tenant's free tier and its credit grants (no I/O, no clock).

Rules (docs/billing.md):
- Usage lines: the closing month's usage, rated (rating.py: one rounding per line).
- Adjustment lines: a closed invoice is never changed. Usage that arrived after its month
  closed (a runner cut off for an hour, say) is found by re-rating that earlier month from
  the ledger and comparing, per line key, with everything already billed for it (its
  invoice and earlier adjustments); the difference goes on this invoice, labelled with the
  month it belongs to. So an earlier month's billed lines always sum to its current rating.
- Free tier: covers up to `free_tier` of the closing month's own usage lines.
- Credits: prepaid grants that had not expired before the month began pay what is left,
  soonest-expiring first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from edgeinfer.services.billing.rating import InvoiceLine, Rated
from edgeinfer.shared.money import minor_unit

ZERO = Decimal("0.00")
LineKey = tuple[str, str, str, Decimal]  # deployment, GPU class, region, unit price


@dataclass(frozen=True)
class BilledLine:
    """Usage already on a closed invoice (a usage or adjustment line), by the month it is for."""

    usage_period: datetime
    deployment_id: str
    gpu_class: str
    region: str
    unit_price: Decimal
    gpu_us: int
    requests: int
    amount: Decimal

    @property
    def key(self) -> LineKey:
        return (self.deployment_id, self.gpu_class, self.region, self.unit_price)


@dataclass(frozen=True)
class CreditGrant:
    id: str
    remaining: Decimal
    granted_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class DraftLine:
    kind: str  # usage | adjustment | free_tier | credit
    usage_period: datetime
    amount: Decimal
    description: str
    deployment_id: str | None = None
    gpu_class: str | None = None
    region: str | None = None
    unit_price: Decimal | None = None
    gpu_us: int = 0
    requests: int = 0
    credit_grant_id: str | None = None


@dataclass(frozen=True)
class Draft:
    currency: str
    lines: list[DraftLine]

    @property
    def subtotal(self) -> Decimal:
        return sum((ln.amount for ln in self.lines if ln.kind in ("usage", "adjustment")), ZERO)

    @property
    def discounts(self) -> Decimal:
        return sum((ln.amount for ln in self.lines if ln.kind in ("free_tier", "credit")), ZERO)

    @property
    def total(self) -> Decimal:
        return self.subtotal + self.discounts


def _usage_line(kind: str, period: datetime, line: InvoiceLine | None, key: LineKey,
                gpu_us: int, requests: int, amount: Decimal) -> DraftLine:
    deployment_id, gpu_class, region, unit_price = key
    what = "usage" if kind == "usage" else f"late usage of {period:%Y-%m}"
    return DraftLine(kind=kind, usage_period=period, amount=amount,
                     description=f"{deployment_id} · {gpu_class} · {region}: {what}",
                     deployment_id=deployment_id, gpu_class=gpu_class, region=region,
                     unit_price=unit_price, gpu_us=gpu_us, requests=requests)


def _key(line: InvoiceLine) -> LineKey:
    return (line.deployment_id, line.gpu_class, line.region, line.unit_price)


def adjustments(period: datetime, rated_now: Rated, billed: Iterable[BilledLine],
                currency: str) -> list[DraftLine]:
    """What an earlier month's current rating adds to (or takes from) what was billed for it."""
    now = {_key(ln): ln for ln in rated_now.lines if ln.currency == currency}
    before: dict[LineKey, list[BilledLine]] = {}
    for b in billed:
        if b.usage_period == period:
            before.setdefault(b.key, []).append(b)
    out = []
    for key in sorted(set(now) | set(before)):
        current = now.get(key)
        was = before.get(key, [])
        gpu_us = (current.gpu_us if current else 0) - sum(b.gpu_us for b in was)
        requests = (current.requests if current else 0) - sum(b.requests for b in was)
        amount = (current.amount if current else ZERO) - sum((b.amount for b in was), ZERO)
        if gpu_us or amount:
            out.append(_usage_line("adjustment", period, current, key, gpu_us, requests, amount))
    return out


def apply_credits(due: Decimal, grants: Sequence[CreditGrant], period_start: datetime,
                  period_end: datetime, period: datetime) -> list[DraftLine]:
    """Credit lines paying `due` from the grants that exist when the invoice closes and had
    not expired before its month began, soonest expiry first."""
    del period_end  # a grant made after the month ended still pays its (later) invoice
    usable = [g for g in grants if g.remaining > 0
              and (g.expires_at is None or g.expires_at > period_start)]
    usable.sort(key=lambda g: (g.expires_at is None, g.expires_at or g.granted_at, g.granted_at, g.id))
    lines = []
    for grant in usable:
        if due <= 0:
            break
        used = min(due, grant.remaining)
        due -= used
        lines.append(DraftLine(kind="credit", usage_period=period, amount=-used,
                               description=f"prepaid credit {grant.id}", credit_grant_id=grant.id))
    return lines


def compose(period_start: datetime, period_end: datetime, currency: str, rated: Rated,
            earlier: dict[datetime, Rated], billed: Sequence[BilledLine], free_tier: Decimal,
            grants: Sequence[CreditGrant]) -> Draft:
    lines = [_usage_line("usage", period_start, ln, _key(ln), ln.gpu_us, ln.requests, ln.amount)
             for ln in rated.lines if ln.currency == currency]
    usage_total = sum((ln.amount for ln in lines), ZERO)
    for period in sorted(earlier):
        lines += adjustments(period, earlier[period], billed, currency)
    free = min(free_tier, usage_total).quantize(minor_unit(currency))
    if free > 0:
        lines.append(DraftLine(kind="free_tier", usage_period=period_start, amount=-free,
                               description="monthly free tier"))
    due = sum((ln.amount for ln in lines), ZERO)
    lines += apply_credits(due, grants, period_start, period_end, period_start)
    return Draft(currency, lines)
