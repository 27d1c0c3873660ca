"""GPU-second accounting: pure functions, no clock reads (times are passed in).

Conservation (design.md, invariant 1): over any interval, what a runner charges equals
the device-busy time it measured × its GPU share, and never exceeds wall time × share.

Fractional shares make per-request rounding the hard part: 0.5 × 3 µs is 1.5 µs. We
charge each request the difference of the rounded cumulative totals,

    charge_k = floor(share × B_k) − floor(share × B_{k-1}),   B_k = busy µs up to request k

so the charges telescope: Σ charge = floor(share × Σ busy) exactly, at every moment, and
no request is ever charged more than share × its own busy time plus one microsecond.
Worked example, share 0.5, busy 3, 3, 3 µs: cumulative 1.5 → 1, 3 → 3, 4.5 → 4; charges
1, 2, 1; total 4 = floor(0.5 × 9). (tests/unit/test_accounting.py pins it.)
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class Ledger(msgspec.Struct, frozen=True, gc=False):
    """A runner's cumulative counters (all integers, microseconds).

    A msgspec struct rather than a frozen dataclass: charge() makes one per request, and a
    frozen dataclass's __init__ costs ~4× as much (one object.__setattr__ per field). Not
    tracked by the cyclic GC (gc=False): its fields are numbers, so it can be in no cycle,
    and one made per request would otherwise count towards every young collection."""

    share: Decimal
    busy_us: int = 0
    charged_us: int = 0
    requests: int = 0
    # The share as an exact integer ratio, computed once: charge() runs for every request.
    _ratio: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        if self._ratio == (0, 1):
            msgspec.structs.force_setattr(self, "_ratio", self.share.as_integer_ratio())

    def charge(self, busy_us: int) -> tuple[Ledger, int]:
        """Book one request's busy time; returns the new ledger and what that request is charged."""
        if busy_us < 0:
            raise ValueError("busy time cannot be negative")
        total_busy = self.busy_us + busy_us
        numerator, denominator = self._ratio
        total_charged = total_busy * numerator // denominator
        return (Ledger(self.share, total_busy, total_charged, self.requests + 1, self._ratio),
                total_charged - self.charged_us)


def split_batch(total_us: int, weights: list[int]) -> list[int]:
    """Split a batch's busy time across its requests by their share of the work.

    Largest-remainder rounding: the parts are integers that add up to `total_us` exactly.
    Ties go to the earlier request, so the split is deterministic.
    """
    if total_us < 0:
        raise ValueError("busy time cannot be negative")
    if not weights or any(w <= 0 for w in weights):
        raise ValueError("every request in a batch has a positive amount of work")
    whole = sum(weights)
    parts = [total_us * w // whole for w in weights]
    remainders = [(total_us * w % whole, -i) for i, w in enumerate(weights)]
    for _, neg_index in sorted(remainders, reverse=True)[: total_us - sum(parts)]:
        parts[-neg_index] += 1
    return parts


def ns_to_us(ns: int) -> int:
    """Nanoseconds of a perf counter to whole microseconds (rounded half up)."""
    return (ns + 500) // 1000
