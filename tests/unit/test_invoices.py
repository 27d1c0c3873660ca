"""invoices.compose: adjustments, free tier and credits as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from edgeinfer.services.billing.invoices import BilledLine, CreditGrant, apply_credits, compose
from edgeinfer.services.billing.rating import InvoiceLine, Rated

SEP = datetime(2026, 9, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
D = Decimal


def line(gpu_us: int, amount: str, deployment: str = "dep_a") -> InvoiceLine:
    return InvoiceLine(deployment, "cpu", "eu-west", "USD", D("0.0001"), gpu_us, 1, D(amount))


def billed(gpu_us: int, amount: str, deployment: str = "dep_a") -> BilledLine:
    return BilledLine(SEP, deployment, "cpu", "eu-west", D("0.0001"), gpu_us, 1, D(amount))


def test_nothing_late_means_no_adjustment_and_late_usage_is_the_difference() -> None:
    same = compose(OCT, NOV, "USD", Rated([], []), {SEP: Rated([line(100, "0.72")], [])},
                   [billed(100, "0.72")], D(0), [])
    assert same.lines == []
    late = compose(OCT, NOV, "USD", Rated([], []),
                   {SEP: Rated([line(150, "0.90"), line(5, "0.01", "dep_b")], [])},
                   [billed(100, "0.72")], D(0), [])
    assert [(ln.deployment_id, ln.gpu_us, ln.amount) for ln in late.lines] == [
        ("dep_a", 50, D("0.18")), ("dep_b", 5, D("0.01"))]


def test_free_tier_covers_only_the_months_own_usage() -> None:
    draft = compose(OCT, NOV, "USD", Rated([line(1, "0.40")], []),
                    {SEP: Rated([line(150, "0.90")], [])}, [billed(100, "0.72")], D("5.00"), [])
    assert [(ln.kind, ln.amount) for ln in draft.lines] == [
        ("usage", D("0.40")), ("adjustment", D("0.18")), ("free_tier", D("-0.40"))]
    assert draft.total == D("0.18")


def test_credits_pay_soonest_expiring_first_and_skip_expired_grants() -> None:
    grants = [CreditGrant("never", D("5"), SEP, None),
              CreditGrant("soon", D("1"), SEP, datetime(2026, 10, 20, tzinfo=UTC)),
              CreditGrant("expired", D("9"), SEP, datetime(2026, 9, 30, tzinfo=UTC)),
              CreditGrant("later", D("9"), datetime(2026, 11, 5, tzinfo=UTC), None)]
    lines = apply_credits(D("3.50"), grants, OCT, NOV, OCT)
    # "later" (granted after October ended, before the invoice closed) is usable too; the
    # never-expiring grants go by grant date.
    assert [(ln.credit_grant_id, ln.amount) for ln in lines] == [("soon", D("-1")),
                                                                ("never", D("-2.50"))]
    assert apply_credits(D("0"), grants, OCT, NOV, OCT) == []
