"""Money is exact: Decimal amounts, integer micro-units for GPU time, one rounding per line.

The rounding rule (docs/billing.md): an invoice line's amount is
GPU-seconds × unit price computed exactly, then rounded once to the currency's minor
unit (cents for USD, whole yen for JPY) with ROUND_HALF_EVEN. Totals are sums of rounded
lines, so an invoice adds up to the minor unit and is reproducible from the ledger.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_SECOND = 1_000_000

# The currencies billing accepts, with the number of decimals of their minor unit as
# Stripe counts it (https://docs.stripe.com/currencies#zero-decimal): 100 JPY is sent to
# Stripe as 100, 100 USD as 10000. Three-decimal currencies (BHD, KWD, …) are left out:
# Stripe wants their last digit zero, a rounding rule of its own.
CURRENCY_DECIMALS: dict[str, int] = {
    **dict.fromkeys(("USD", "EUR", "GBP", "CHF", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK",
                     "PLN", "CZK", "HUF", "RON", "SGD", "HKD", "INR", "BRL", "MXN", "ZAR",
                     "AED", "ILS", "TRY", "THB", "MYR", "PHP", "IDR", "TWD", "CNY"), 2),
    **dict.fromkeys(("JPY", "KRW", "CLP", "VND", "ISK", "PYG", "UGX", "XAF", "XOF"), 0),
}


class UnsupportedCurrency(ValueError):
    pass


def check_currency(code: str) -> str:
    """`code` if billing supports it; else UnsupportedCurrency naming what is supported."""
    if code not in CURRENCY_DECIMALS:
        raise UnsupportedCurrency(
            f"currency {code!r} is not supported; use one of {', '.join(sorted(CURRENCY_DECIMALS))}")
    return code


def minor_unit(currency: str) -> Decimal:
    """The smallest amount of `currency`: 0.01 for USD, 1 for JPY."""
    return Decimal(1).scaleb(-CURRENCY_DECIMALS[check_currency(currency)])


def to_minor_units(amount: Decimal, currency: str) -> int:
    """An amount as the integer count of its currency's minor unit (what Stripe takes):
    12.34 USD → 1234, 100 JPY → 100. Refuses an amount finer than the minor unit."""
    value = amount.scaleb(CURRENCY_DECIMALS[check_currency(currency)])
    if value != value.to_integral_value():
        raise ValueError(f"{amount} {currency} is finer than the currency's minor unit")
    return int(value)


def gpu_seconds(gpu_us: int) -> Decimal:
    """Integer GPU-microseconds to exact Decimal GPU-seconds (no float on the way)."""
    if not isinstance(gpu_us, int):
        raise TypeError(f"gpu_us must be an int, got {type(gpu_us).__name__}")
    return Decimal(gpu_us).scaleb(-6)


def line_amount(gpu_us: int, unit_price_per_second: Decimal, currency: str) -> Decimal:
    """The one rounding of an invoice line: exact product, then half-even to the minor unit."""
    if not isinstance(unit_price_per_second, Decimal):
        raise TypeError("unit prices are Decimal, never float")
    return (gpu_seconds(gpu_us) * unit_price_per_second).quantize(minor_unit(currency),
                                                                  rounding=ROUND_HALF_EVEN)


def parse_price(text: str) -> Decimal:
    """A price from config or an API body; refuses floats' lookalikes such as 'nan' or '1e400'."""
    try:
        value = Decimal(text)
    except Exception:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} must be a finite, non-negative amount")
    return value
