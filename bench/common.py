"""Helpers the benchmark scripts share (run them as `python bench/NAME.py`)."""

from __future__ import annotations

import threading
import time

import psutil


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PeakRss(threading.Thread):
    """Samples the RSS of a process and all its descendants until `running` is cleared."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.NoSuchProcess:
                return
            time.sleep(self.interval_s)
