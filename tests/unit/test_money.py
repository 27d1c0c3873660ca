from decimal import Decimal

import pytest

from shared.money import gpu_seconds, line_amount, parse_price


def test_gpu_seconds_are_exact_decimals() -> None:
    assert gpu_seconds(1) == Decimal("0.000001")
    assert gpu_seconds(1_234_567) == Decimal("1.234567")
    with pytest.raises(TypeError):
        gpu_seconds(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gpu_us", "price", "amount"),
    [
        pytest.param(3_600_000_000, "0.0001", "0.36", id="an-hour-of-cpu-slot"),
        pytest.param(50_000_000, "0.0001", "0.00", id="half-cent-rounds-to-even-down"),
        pytest.param(150_000_000, "0.0001", "0.02", id="one-and-a-half-cents-rounds-to-even-up"),
        pytest.param(0, "0.0008", "0.00", id="nothing-used"),
    ],
)
def test_one_rounding_per_line_half_even(gpu_us: int, price: str, amount: str) -> None:
    assert line_amount(gpu_us, Decimal(price)) == Decimal(amount)


def test_prices_are_never_floats() -> None:
    with pytest.raises(TypeError):
        line_amount(10, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["nan", "-1", "inf", "abc"])
def test_parse_price_refuses_non_amounts(text: str) -> None:
    with pytest.raises(ValueError):
        parse_price(text)
