from datetime import UTC, datetime
from decimal import Decimal

from edgeinfer.services.billing.rating import Price, UsageRow, rate

JAN = datetime(2026, 1, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)


def row(hour: datetime, gpu_us: int, region: str = "eu-west", gpu_class: str = "cpu") -> UsageRow:
    return UsageRow("dep_a", "eu-west", region, gpu_class, hour, gpu_us, 1)


PRICES = [
    Price("cpu", "eu-west", "USD", Decimal("0.0001"), JAN),
    Price("cpu", "eu-west", "USD", Decimal("0.0002"), MAR),
]


def test_each_hour_is_priced_at_the_price_in_effect_then() -> None:
    rated = rate([row(datetime(2026, 2, 27, tzinfo=UTC), 10_000_000_000),
                  row(datetime(2026, 3, 2, tzinfo=UTC), 10_000_000_000)], PRICES)
    assert [(line.unit_price, line.amount) for line in rated.lines] == [
        (Decimal("0.0001"), Decimal("1.00")), (Decimal("0.0002"), Decimal("2.00"))]
    assert rated.totals() == {"USD": Decimal("3.00")}


def test_rows_of_one_line_are_summed_before_the_single_rounding() -> None:
    # 3 × 0.4 cent would round to 0 each; summed first they make 1.2 cents → 0.01.
    rated = rate([row(datetime(2026, 2, 1, h, tzinfo=UTC), 40_000_000) for h in range(3)], PRICES)
    assert len(rated.lines) == 1
    assert rated.lines[0].amount == Decimal("0.01")
    assert rated.lines[0].requests == 3


def test_usage_without_a_price_is_reported_not_dropped() -> None:
    rated = rate([row(datetime(2026, 2, 1, tzinfo=UTC), 5, region="mars")], PRICES)
    assert rated.lines == []
    assert [r.region for r in rated.unpriced] == ["mars"]


def test_rating_is_reproducible() -> None:
    rows = [row(datetime(2026, 2, 1, h, tzinfo=UTC), 1_000_000 * (h + 1)) for h in range(24)]
    assert rate(rows, PRICES) == rate(list(reversed(rows)), PRICES)
