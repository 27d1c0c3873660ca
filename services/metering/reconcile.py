"""Reconciliation: what runners say they charged vs what the ledger holds — pure.

Every runner reports its cumulative charged GPU-µs in its heartbeat. The ledger's sum for
that runner may lag (events in an outbox or in flight) but must catch up: a difference
that does not close within the grace period (at least the time an outbox needs to drain)
means usage was lost or counted twice, and raises an alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerBalance:
    runner_id: str
    reported_us: int
    ledger_us: int
    open_since: float | None  # when the difference appeared; None when balanced
    alert: bool

    @property
    def difference_us(self) -> int:
        return self.reported_us - self.ledger_us


def reconcile(reported: Mapping[str, int], ledger: Mapping[str, int],
              open_since: Mapping[str, float], now: float,
              grace_s: float) -> list[RunnerBalance]:
    out = []
    for runner_id in sorted(reported):
        reported_us = reported[runner_id]
        ledger_us = ledger.get(runner_id, 0)
        if reported_us == ledger_us:
            out.append(RunnerBalance(runner_id, reported_us, ledger_us, None, False))
            continue
        since = open_since.get(runner_id, now)
        out.append(RunnerBalance(runner_id, reported_us, ledger_us, since,
                                 now - since >= grace_s))
    return out
