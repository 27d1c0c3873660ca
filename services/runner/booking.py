"""Booking one request: charge its part of a batch and spool its usage event — the one
place this is done, called by the runner per request and by the benchmarks that measure
it (bench/accounting.py, bench/gpu_check.py).

The event is spooled before the answer (what a client was answered is never lost), and
the ledger moves only once the event is spooled: a request whose event could not be
written (disk full) fails, and its device time is neither charged nor counted busy, like
any attempt that fails through the platform's fault.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from edgeinfer.services.runner.accounting import Ledger
from edgeinfer.services.runner.usage_lines import UsageLines
from edgeinfer.shared.events import new_id


class Spool(Protocol):
    def append(self, line: bytes) -> None: ...


class Bookkeeper:
    __slots__ = ("_lines", "_spool", "ledger")

    def __init__(self, ledger: Ledger, lines: UsageLines, spool: Spool) -> None:
        self.ledger = ledger
        self._lines = lines
        self._spool = spool

    def book(self, tenant_id: str, request_id: str, busy_us: int, started_at: datetime,
             ended_at: datetime, trace_id: str = "") -> tuple[str, int]:
        """(event id, µs charged)."""
        ledger, gpu_us = self.ledger.charge(busy_us)
        event_id = new_id()
        self._spool.append(self._lines.line(event_id, tenant_id, request_id, busy_us, gpu_us,
                                            started_at, ended_at, trace_id))
        self.ledger = ledger
        return event_id, gpu_us
