"""Time is an input: every service gets a Clock at start and never reads time itself.

`SystemClock` is the one place the platform reads the machine's clocks (style.md §2);
tests pass a `FrozenClock` and move it by hand instead of sleeping or patching `time`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC: for what is stored or shown."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards: for timeouts, windows and durations."""
        ...

    def monotonic_ns(self) -> int:
        """The same clock in integer nanoseconds: for exact accounting."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


SYSTEM_CLOCK = SystemClock()


@dataclass
class FrozenClock:
    """A clock that moves only when told to (tests, the simulator)."""

    wall: datetime
    mono: float = 0.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def monotonic_ns(self) -> int:
        return round(self.mono * 1e9)

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds
