"""Placement across PoPs when GPUs are finite — pure.

Each PoP has a number of GPU slots of each class. A deployment's desired replicas per PoP
are placed where wanted while there is room; what does not fit spills to the nearest other
PoP the deployment may run in (its residency rule) that still has room — never anywhere
else. What fits nowhere is reported, not dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    replicas: dict[str, int]  # PoP → replicas to run there
    spilled: dict[str, dict[str, int]]  # from PoP → {to PoP: replicas}
    unplaced: int


def place(desired: Mapping[str, int], running: Mapping[str, int], free: Mapping[str, int | None],
          nearest: Mapping[str, Sequence[str]]) -> Placement:
    """`desired`/`running`: this deployment's replicas per allowed PoP; `free`: slots of its
    GPU class still free per PoP, not counting its own running replicas (None: unlimited);
    `nearest[pop]`: the other allowed PoPs, nearest first."""
    room = {pop: None if free.get(pop) is None else free[pop] + running.get(pop, 0)  # type: ignore[operator]
            for pop in desired}
    replicas = {pop: 0 for pop in desired}
    spilled: dict[str, dict[str, int]] = {}
    unplaced = 0

    def take(pop: str, n: int) -> int:
        limit = room.get(pop)
        got = n if limit is None else min(n, limit - replicas[pop])
        replicas[pop] += max(0, got)
        return max(0, got)

    # Wanted PoPs first (in a stable order), then spill what is left, nearest first.
    shortfall = {pop: want - take(pop, want) for pop, want in sorted(desired.items())}
    for pop, short in sorted(shortfall.items()):
        for other in nearest.get(pop, ()):
            if short == 0:
                break
            if other not in replicas:
                continue  # outside the residency rule
            got = take(other, short)
            if got:
                spilled.setdefault(pop, {})[other] = got
                short -= got
        unplaced += short
    return Placement(replicas, spilled, unplaced)
