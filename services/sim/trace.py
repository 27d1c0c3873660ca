"""The Azure Functions 2019 trace as (deployment × PoP) demand streams."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def split_across_pops(functions: list[tuple[str, np.ndarray, float]], pops: list[str],
                      seed: int = 0) -> list[Stream]:
    """Each function is a deployment served from every PoP: its clients are spread over
    the PoPs with a per-deployment mix (Dirichlet), each invocation drawn independently."""
    rng = np.random.default_rng(seed)
    streams = []
    for name, counts, duration_s in functions:
        if len(pops) == 1:
            per_pop = counts[None, :]
        else:
            mix = rng.dirichlet(np.full(len(pops), 0.5))
            per_pop = np.stack([rng.multinomial(c, mix) if c else np.zeros(len(pops), np.int64)
                                for c in counts], axis=1)
        for pop, row in zip(pops, per_pop, strict=True):
            minutes = np.flatnonzero(row)
            if len(minutes):
                streams.append(Stream(name[:12], pop, list(zip(minutes.tolist(),
                                                               row[minutes].tolist(), strict=True)),
                                      duration_s))
    return streams
