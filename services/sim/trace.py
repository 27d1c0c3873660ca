"""The Azure Functions 2019 trace as (deployment × PoP) demand streams, routed to PoPs by the
router's own policy function."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinfer.services.router.policy import order_pops

MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Stream:
    deployment: str
    pop: str
    events: list[tuple[int, int]]  # (minute, invocations), invocations > 0
    duration_s: float


def load_functions(trace_dir: Path) -> list[tuple[str, np.ndarray, float]]:
    """(function hash, per-minute invocations, mean duration in seconds) per function."""
    durations: dict[str, float] = {}
    with open(trace_dir / "azure-functions-2019-100-durations.csv", newline="") as f:
        for row in csv.DictReader(f):
            durations[row["HashFunction"]] = float(row["Average"]) / 1000.0
    functions = []
    with open(trace_dir / "azure-functions-2019-100-invocations.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        first_minute = header.index("minute_1")
        for row in reader:
            counts = np.array([int(v) for v in row[first_minute:]], dtype=np.int64)
            functions.append((row[0], counts, durations.get(row[0], 1.0)))
    return functions


@dataclass(frozen=True)
class Geography:
    """Simulated PoPs, one client region beside each, and the RTT between them."""

    pops: list[str]
    jurisdiction: dict[str, str]
    rtt_ms: dict[str, dict[str, float]]  # client region (= its PoP's name) → PoP → RTT

    @classmethod
    def spread(cls, pops: list[str], jurisdictions: tuple[str, ...] = ("eu", "us", "apac")) -> Geography:
        """PoPs dealt round-robin to jurisdictions; 5 ms to the region's own PoP, 20 ms + 5 ms
        per step to others of its jurisdiction, 90 ms + 5 ms per step abroad."""
        juris = {pop: jurisdictions[i % len(jurisdictions)] for i, pop in enumerate(pops)}
        rtt = {client: {pop: 5.0 if client == pop else
                        (20.0 if juris[client] == juris[pop] else 90.0) + 5.0 * abs(i - j)
                        for j, pop in enumerate(pops)}
               for i, client in enumerate(pops)}
        return cls(pops, juris, rtt)


def split_across_pops(functions: list[tuple[str, np.ndarray, float]], pops: list[str],
                      seed: int = 0, pinned_share: float = 0.3) -> list[Stream]:
    """Each function is a deployment with clients in every PoP's region (a per-deployment
    mix, Dirichlet), each invocation's region drawn independently, and routed as the
    router routes it: to the nearest PoP its residency allows (router.policy.order_pops).
    `pinned_share` of the deployments are pinned to one jurisdiction (drawn), so their
    clients abroad are served from the nearest PoP inside it. Capacity is not modelled
    here (one instance per stream), so a request never spills to a farther PoP."""
    rng = np.random.default_rng(seed)
    geography = Geography.spread(pops)
    jurisdictions = sorted(set(geography.jurisdiction.values()))
    streams = []
    for name, counts, duration_s in functions:
        allowed = pops
        if len(pops) == 1:
            per_region = counts[None, :]
        else:
            mix = rng.dirichlet(np.full(len(pops), 0.5))
            per_region = np.stack([rng.multinomial(c, mix) if c else np.zeros(len(pops), np.int64)
                                   for c in counts], axis=1)
            if rng.random() < pinned_share:
                home = jurisdictions[rng.integers(len(jurisdictions))]
                allowed = [p for p in pops if geography.jurisdiction[p] == home]
        per_pop = {pop: np.zeros(len(counts), np.int64) for pop in pops}
        for client, row in zip(pops, per_region, strict=True):
            served_by = order_pops(allowed, geography.rtt_ms[client])[0][0]
            per_pop[served_by] += row
        for pop, row in per_pop.items():
            minutes = np.flatnonzero(row)
            if len(minutes):
                streams.append(Stream(name[:12], pop, list(zip(minutes.tolist(),
                                                               row[minutes].tolist(), strict=True)),
                                      duration_s))
    return streams
