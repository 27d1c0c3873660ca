from decimal import Decimal

import pytest

from edgeinfer.services.billing.budgets import Budget, decide

BUDGET = Budget("ten_a", Decimal("100"), "USD", (50, 80, 100), hard_stop=True)


@pytest.mark.parametrize(
    ("spend", "alerted", "alerts", "blocked"),
    [
        pytest.param("10", [], (), False, id="under-every-threshold"),
        pytest.param("85", [], (50, 80), False, id="two-crossed-at-once"),
        pytest.param("85", [50], (80,), False, id="each-alert-once-per-period"),
        pytest.param("100", [50, 80], (100,), True, id="hard-stop-at-the-limit"),
        pytest.param("250", [50, 80, 100], (), True, id="stays-stopped"),
    ],
)
def test_decide(spend: str, alerted: list[int], alerts: tuple[int, ...], blocked: bool) -> None:
    got = decide(BUDGET, Decimal(spend), alerted)
    assert (got.new_alerts, got.blocked) == (alerts, blocked)


def test_without_hard_stop_it_only_alerts() -> None:
    soft = Budget("ten_a", Decimal("1"), "USD", (100,), hard_stop=False)
    assert decide(soft, Decimal("5"), []) .blocked is False
