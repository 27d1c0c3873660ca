"""Sentence embeddings from a BERT-style encoder with mean pooling (e.g. all-MiniLM-L6-v2).

Texts in, L2-normalised vectors out — the same numbers sentence-transformers gives
(tests/unit/test_embedding_model.py compares them). Tokens are the split unit: a batch pads
every text to its longest, but a request is charged for its own (real) tokens' share of the
batch's busy time, so a short text batched with a long one does not pay for the padding.

Tokenizing and padding happen on the host, outside the timed forward pass; weights come
from safetensors (no pickle) via `torch` and `transformers`' BertModel, installed with the
`text` extra. On a GPU, small batches are padded to a bucket and replayed from CUDA graphs
captured at load (cuda_graphs.py: eager launches would be charged as GPU time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models.base import InvalidInput, Work
from edgeinfer.services.runner.models.cuda_graphs import GraphedForward
from edgeinfer.shared.model_formats import read_embedding_artifact

MAX_TEXTS_PER_REQUEST = 256
MAX_CHARS_PER_TEXT = 20_000
MAX_BATCH_TOKENS = 16_384


@dataclass
class EmbeddingModel:
    tokenizer: Any
    encoder: Any
    device: str
    max_tokens: int
    dimensions: int
    framework: str = "sentence-embedding"
    unit: str = "tokens"
    max_batch_units: int = MAX_BATCH_TOKENS
    graphs: GraphedForward | None = None

    @classmethod
    def load(cls, artifact: bytes, device: Device, cuda_graphs: bool = True) -> EmbeddingModel:
        try:
            import torch
            from safetensors.torch import load as load_safetensors
            from tokenizers import Tokenizer
            from transformers import BertConfig, BertModel
        except ImportError as exc:
            raise RuntimeError("serving sentence-embedding models needs the `text` extra: "
                               f"pip install 'edgeinfer[text]' ({exc})") from None
        files = read_embedding_artifact(artifact)
        settings = json.loads(files.get("sentence_bert_config.json", b"{}"))
        config = BertConfig.from_dict(json.loads(files["config.json"]))
        max_tokens = min(int(settings.get("max_seq_length", 512)), config.max_position_embeddings)
        tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
        tokenizer.no_padding()  # padding is per batch, in collate
        tokenizer.enable_truncation(max_tokens)
        encoder = BertModel(config, add_pooling_layer=False)
        # The checkpoint may carry a pooler and buffers the encoder does not use; missing
        # weights would leave random ones, so those are an error.
        missing, _ = encoder.load_state_dict(load_safetensors(files["model.safetensors"]),
                                             strict=False)
        if missing:
            raise ValueError(f"model.safetensors lacks weights the encoder needs: {missing[:5]}")
        if device.kind == "cpu":
            torch.set_num_threads(1)  # one CPU slot, as for ONNX models
        encoder.eval().to(device.torch_device)
        model = cls(tokenizer, encoder, device.torch_device, max_tokens, config.hidden_size)
        if device.kind == "cuda" and cuda_graphs:
            model.graphs = GraphedForward.capture(model.encode, device.torch_device, max_tokens)
        return model

    def validate(self, inputs: list[Any]) -> Work:
        if not inputs:
            raise InvalidInput("inputs must hold at least one text")
        if len(inputs) > MAX_TEXTS_PER_REQUEST:
            raise InvalidInput(f"at most {MAX_TEXTS_PER_REQUEST} texts per request")
        for i, text in enumerate(inputs):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"input {i} must be a non-empty string")
            if len(text) > MAX_CHARS_PER_TEXT:
                raise InvalidInput(f"input {i} has {len(text)} characters; at most "
                                   f"{MAX_CHARS_PER_TEXT} (texts are cut at {self.max_tokens} "
                                   "tokens anyway)")
        encodings = self.tokenizer.encode_batch(inputs)
        return Work([e.ids for e in encodings], sum(len(e.ids) for e in encodings))

    def warm_input(self) -> Work:
        return self.validate(["warm up the encoder"])

    def collate(self, batch: Sequence[Work]) -> tuple[Any, Any]:
        import torch

        rows = [ids for work in batch for ids in work.payload]
        width = max(len(ids) for ids in rows)
        shape = self.graphs.shape_for(len(rows), width, self.max_tokens) if self.graphs else None
        padded_rows, padded_width = shape or (len(rows), width)
        input_ids = torch.zeros((padded_rows, padded_width), dtype=torch.long)
        mask = torch.zeros((padded_rows, padded_width), dtype=torch.long)
        mask[len(rows):, 0] = 1  # a padding row attends to one token: never a fully masked row
        for i, ids in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            mask[i, :len(ids)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def forward(self, collated: tuple[Any, Any]) -> Any:
        input_ids, mask = collated
        if self.graphs is not None and tuple(input_ids.shape) in self.graphs.captured:
            return self.graphs.run(input_ids, mask)
        return self.encode(input_ids, mask)

    def encode(self, input_ids: Any, mask: Any) -> Any:
        """The forward pass itself: encoder, mean pooling over real tokens, L2 norm."""
        import torch

        with torch.inference_mode():
            hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def split(self, output: Any, batch: Sequence[Work]) -> list[dict[str, Any]]:
        vectors = output.cpu().numpy().round(6)
        parts, offset = [], 0
        for work in batch:
            texts = len(work.payload)
            parts.append({"embeddings": vectors[offset:offset + texts].tolist(),
                          "tokens": [len(ids) for ids in work.payload]})
            offset += texts
        return parts
