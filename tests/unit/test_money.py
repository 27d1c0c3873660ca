from decimal import Decimal

import pytest

from edgeinfer.shared.money import (
    UnsupportedCurrency,
    check_currency,
    gpu_seconds,
    line_amount,
    parse_price,
    to_minor_units,
)


def test_gpu_seconds_are_exact_decimals() -> None:
    assert gpu_seconds(1) == Decimal("0.000001")
    assert gpu_seconds(1_234_567) == Decimal("1.234567")
    with pytest.raises(TypeError):
        gpu_seconds(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gpu_us", "price", "currency", "amount"),
    [
        pytest.param(3_600_000_000, "0.0001", "USD", "0.36", id="an-hour-of-cpu-slot"),
        pytest.param(50_000_000, "0.0001", "USD", "0.00", id="half-cent-rounds-to-even-down"),
        pytest.param(150_000_000, "0.0001", "USD", "0.02",
                     id="one-and-a-half-cents-rounds-to-even-up"),
        pytest.param(0, "0.0008", "USD", "0.00", id="nothing-used"),
        # 3,600 s × 0.125 JPY = 450 JPY exactly; 2.5 s × 1 JPY rounds half-even to 2 yen.
        pytest.param(3_600_000_000, "0.125", "JPY", "450", id="yen-have-no-decimals"),
        pytest.param(2_500_000, "1", "JPY", "2", id="half-a-yen-rounds-to-even"),
    ],
)
def test_one_rounding_per_line_half_even(gpu_us: int, price: str, currency: str,
                                         amount: str) -> None:
    rounded = line_amount(gpu_us, Decimal(price), currency)
    assert rounded == Decimal(amount)
    assert rounded.as_tuple().exponent == Decimal(amount).as_tuple().exponent


def test_prices_are_never_floats() -> None:
    with pytest.raises(TypeError):
        line_amount(10, 0.1, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        pytest.param("12.34", "USD", 1234, id="cents"),
        pytest.param("100", "JPY", 100, id="yen-are-not-multiplied-by-100"),
        pytest.param("-0.50", "EUR", -50, id="a-credit"),
        pytest.param("7", "KRW", 7, id="won"),
    ],
)
def test_stripe_amounts_in_minor_units(amount: str, currency: str, minor: int) -> None:
    assert to_minor_units(Decimal(amount), currency) == minor


def test_amounts_finer_than_the_minor_unit_and_unknown_currencies_are_refused() -> None:
    with pytest.raises(ValueError, match="finer"):
        to_minor_units(Decimal("1.5"), "JPY")
    with pytest.raises(UnsupportedCurrency, match="'XYZ' is not supported"):
        to_minor_units(Decimal("1"), "XYZ")
    with pytest.raises(UnsupportedCurrency):
        check_currency("KWD")  # three decimals: not supported


@pytest.mark.parametrize("text", ["nan", "-1", "inf", "abc"])
def test_parse_price_refuses_non_amounts(text: str) -> None:
    with pytest.raises(ValueError):
        parse_price(text)
