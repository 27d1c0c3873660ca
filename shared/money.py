"""Money is exact: Decimal amounts, integer micro-units for GPU time, one rounding per line.

The rounding rule (docs/billing.md): an invoice line's amount is
GPU-seconds × unit price computed exactly, then rounded once to the currency's minor
unit (cents) with ROUND_HALF_EVEN. Totals are sums of rounded lines, so an invoice
adds up to the cent and is reproducible from the ledger.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_SECOND = 1_000_000
CENT = Decimal("0.01")


def gpu_seconds(gpu_us: int) -> Decimal:
    """Integer GPU-microseconds to exact Decimal GPU-seconds (no float on the way)."""
    if not isinstance(gpu_us, int):
        raise TypeError(f"gpu_us must be an int, got {type(gpu_us).__name__}")
    return Decimal(gpu_us).scaleb(-6)


def line_amount(gpu_us: int, unit_price_per_second: Decimal) -> Decimal:
    """The one rounding of an invoice line: exact product, then half-even to the cent."""
    if not isinstance(unit_price_per_second, Decimal):
        raise TypeError("unit prices are Decimal, never float")
    return (gpu_seconds(gpu_us) * unit_price_per_second).quantize(CENT, rounding=ROUND_HALF_EVEN)


def parse_price(text: str) -> Decimal:
    """A price from config or an API body; refuses floats' lookalikes such as 'nan' or '1e400'."""
    try:
        value = Decimal(text)
    except Exception:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} must be a finite, non-negative amount")
    return value
