"""Bucketing for CUDA-graph replay, and what it must not change: the real MiniLM on the CPU
with a stand-in for the captured graphs (capture itself needs a GPU: bench/gpu_check.py
runs it there) — padded batches give every real text the vector it gets unpadded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from edgeinfer.services.registry.demo_model import minilm_artifact
from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models import load_model
from edgeinfer.services.runner.models.base import run_alone
from edgeinfer.services.runner.models.cuda_graphs import (
    GRAPH_MAX_TOKENS,
    all_graph_shapes,
    graph_shape,
)
from edgeinfer.services.runner.models.embedding import EmbeddingModel


@pytest.mark.parametrize(("rows", "width", "expected"), [
    (1, 8, (1, 16)),
    (3, 58, (4, 64)),
    (8, 64, (8, 64)),
    (16, 256, (16, 256)),  # 4,096 tokens: the largest graphed batch
    (17, 200, None),  # 32 × 256 padded would be 8,192 tokens: compute-bound, eager
    (33, 10, None),  # more rows than any graph
    (1, 300, None),  # wider than any bucket
])
def test_batches_are_padded_to_the_smallest_bucket_that_fits(
        rows: int, width: int, expected: tuple[int, int] | None) -> None:
    assert graph_shape(rows, width, max_width=512) == expected


def test_no_bucket_is_wider_than_the_model_takes() -> None:
    assert graph_shape(1, 100, max_width=128) == (1, 128)
    assert graph_shape(1, 129, max_width=128) is None
    shapes = all_graph_shapes(max_width=128)
    assert shapes and all(w <= 128 and r * w <= GRAPH_MAX_TOKENS for r, w in shapes)
    assert len(all_graph_shapes(max_width=256)) == 29


class EagerStandIn:
    """What the runner gets from GraphedForward, with the captured graph replaced by the
    model's own forward pass at the same padded shape."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model
        self.captured = {shape: None for shape in all_graph_shapes(model.max_tokens)}
        self.runs: list[tuple[int, int]] = []

    def shape_for(self, rows: int, width: int, max_width: int) -> tuple[int, int] | None:
        shape = graph_shape(rows, width, max_width)
        return shape if shape in self.captured else None

    def run(self, input_ids: Any, mask: Any) -> Any:
        self.runs.append(tuple(input_ids.shape))
        return self.model.encode(input_ids, mask)


@pytest.fixture(scope="module")
def eager() -> EmbeddingModel:
    loaded = load_model("sentence-embedding", minilm_artifact(), Device("cpu", "cpu", "cpu"))
    assert isinstance(loaded, EmbeddingModel) and loaded.graphs is None  # no graphs on a CPU
    return loaded


def test_padded_batches_give_each_text_its_unpadded_vector(eager: EmbeddingModel) -> None:
    graphed = replace(eager)
    stand_in = EagerStandIn(eager)
    graphed.graphs = stand_in  # type: ignore[assignment]
    texts = ["edge", "GPU seconds are billed by the token share of each batch", "a b c"]
    works = [graphed.validate([t]) for t in texts]

    ids, mask = graphed.collate(works)
    assert tuple(ids.shape) == (4, 16)  # 3 rows of ≤ 13 tokens → the (4, 16) bucket
    assert mask[3].tolist() == [1] + [0] * 15  # the padding row attends to one token only

    outputs = graphed.split(graphed.forward((ids, mask)), works)
    assert stand_in.runs == [(4, 16)]
    for text, output in zip(texts, outputs, strict=True):
        alone = run_alone(eager, eager.validate([text]))["embeddings"][0]
        np.testing.assert_allclose(output["embeddings"][0], alone, atol=1e-5)


def test_batches_too_large_for_a_graph_run_eagerly(eager: EmbeddingModel) -> None:
    graphed = replace(eager)
    stand_in = EagerStandIn(eager)
    graphed.graphs = stand_in  # type: ignore[assignment]
    works = [graphed.validate(["word " * 40]) for _ in range(33)]
    ids, _ = graphed.collate(works)
    assert ids.shape[0] == 33  # not padded: no graph has that many rows
    graphed.forward(graphed.collate(works))
    assert stand_in.runs == []
