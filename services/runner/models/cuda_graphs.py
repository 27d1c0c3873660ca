"""Small batches' forward passes replayed from CUDA graphs.

Why: a request is charged the stream's elapsed time around its model call (decision 0010).
An eager forward of a small transformer batch is ~100 kernel launches issued from Python,
and between them the GPU, held for the request, waits: on an H200, one text of 8 tokens
took 2.2–3.8 ms by CUDA events, of which kernels ran 12–16 %; replayed from a graph it took
0.5 ms, with the same outputs to 1e-6 (bench/gpu_check.py; docs/models.md has the figures).
Large batches are compute-bound and gain nothing (128 × 256 tokens: 21.8 ms either way), so
they stay eager and need no graph memory.

A graph replays fixed shapes, so a batch is padded up to a bucket: rows to a power of two,
width to one of a few lengths. Padding rows attend to one token each (no all-masked row,
which would give NaNs in the attention); a request is still charged by its own real
tokens' share of the batch (accounting.split_batch), so padding is shared, not billed to
whoever fills it. Graphs are captured at load, as part of warm-up: never charged, and no
request waits for a capture.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GRAPH_ROWS = (1, 2, 4, 8, 16, 32)
GRAPH_WIDTHS = (16, 32, 64, 128, 256)
# Past this many padded tokens a batch is compute-bound: replay and eager take the same time.
GRAPH_MAX_TOKENS = 4096


def graph_shape(rows: int, width: int, max_width: int) -> tuple[int, int] | None:
    """The padded (rows, width) whose graph runs this batch, or None: run it eagerly."""
    padded_rows = next((r for r in GRAPH_ROWS if r >= rows), None)
    padded_width = next((w for w in GRAPH_WIDTHS if w >= width), None)
    if padded_rows is None or padded_width is None or padded_width > max_width:
        return None
    if padded_rows * padded_width > GRAPH_MAX_TOKENS:
        return None
    return padded_rows, padded_width


def all_graph_shapes(max_width: int) -> list[tuple[int, int]]:
    return [(r, w) for r in GRAPH_ROWS for w in GRAPH_WIDTHS
            if w <= max_width and r * w <= GRAPH_MAX_TOKENS]


@dataclass
class _Captured:
    graph: Any
    input_ids: Any
    mask: Any
    output: Any


@dataclass
class GraphedForward:
    """`run(input_ids, mask)` replays the graph captured for that exact padded shape."""

    captured: dict[tuple[int, int], _Captured] = field(default_factory=dict)
    capture_s: float = 0.0

    @classmethod
    def capture(cls, encode: Callable[[Any, Any], Any], device: str,
                max_width: int) -> GraphedForward:
        import torch

        graphed = cls()
        started = time.perf_counter()
        pool = None  # one memory pool for every graph: they never run at the same time
        for rows, width in all_graph_shapes(max_width):
            input_ids = torch.zeros((rows, width), dtype=torch.long, device=device)
            mask = torch.zeros((rows, width), dtype=torch.long, device=device)
            mask[:, 0] = 1
            side = torch.cuda.Stream()  # warm-up off the capturing stream, as torch asks
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    encode(input_ids, mask)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                output = encode(input_ids, mask)
            pool = graph.pool()
            graphed.captured[(rows, width)] = _Captured(graph, input_ids, mask, output)
        torch.cuda.synchronize()
        graphed.capture_s = time.perf_counter() - started
        return graphed

    def shape_for(self, rows: int, width: int, max_width: int) -> tuple[int, int] | None:
        shape = graph_shape(rows, width, max_width)
        return shape if shape in self.captured else None

    def run(self, input_ids: Any, mask: Any) -> Any:
        captured = self.captured[tuple(input_ids.shape)]
        captured.input_ids.copy_(input_ids)
        captured.mask.copy_(mask)
        captured.graph.replay()
        # The graph's output buffer is overwritten by its next replay: hand out a copy.
        return captured.output.clone()
