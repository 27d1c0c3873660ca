"""ONNX graphs (e.g. the digits classifier): rows of numbers in, labels and probabilities out.

Rows are the split unit: a batch's busy time is shared by the rows each request sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models.base import InvalidInput, Work

MAX_ROWS_PER_REQUEST = 1024


@dataclass
class OnnxModel:
    session: Any
    input_name: str
    features: int
    output_names: list[str]
    framework: str = "onnx"
    unit: str = "rows"
    max_batch_units: int = MAX_ROWS_PER_REQUEST

    @classmethod
    def load(cls, data: bytes, device: Device | None = None) -> OnnxModel:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread: the runner owns one device slot; more threads would make a
        # request's measured time depend on what else runs on the machine.
        options.intra_op_num_threads = 1
        on_gpu = device is not None and device.kind == "cuda"
        providers = ["CUDAExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
        if on_gpu and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this runner's GPU class needs onnxruntime's CUDA provider, and the "
                               "installed onnxruntime has none (install onnxruntime-gpu)")
        session = ort.InferenceSession(data, sess_options=options, providers=providers)
        # onnxruntime falls back to the CPU with only a warning (e.g. CUDA libraries missing):
        # that would bill CPU work as GPU time, so it is refused.
        if on_gpu and session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError("onnxruntime could not start its CUDA provider "
                               f"(running on {session.get_providers()}); refusing to serve a GPU "
                               "class on the CPU")
        (first,) = session.get_inputs()
        features = first.shape[-1]
        if not isinstance(features, int):
            raise ValueError("the model's input must have a fixed feature dimension")
        return cls(session, first.name, features, [o.name for o in session.get_outputs()])

    def validate(self, inputs: list[Any]) -> Work:
        if not inputs:
            raise InvalidInput("inputs must hold at least one row")
        if len(inputs) > MAX_ROWS_PER_REQUEST:
            raise InvalidInput(f"at most {MAX_ROWS_PER_REQUEST} rows per request")
        for i, row in enumerate(inputs):
            if not isinstance(row, list) or len(row) != self.features:
                raise InvalidInput(f"row {i} must be a list of {self.features} numbers")
        try:
            array = np.asarray(inputs, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidInput("inputs must be numbers") from None
        if not np.isfinite(array).all():
            raise InvalidInput("inputs must be finite numbers")
        return Work(array, len(array))

    def warm_input(self) -> Work:
        return self.validate([[0.0] * self.features])

    def collate(self, batch: Sequence[Work]) -> np.ndarray:
        return batch[0].payload if len(batch) == 1 else np.concatenate([w.payload for w in batch])

    def forward(self, array: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: array})

    def split(self, output: list[np.ndarray], batch: Sequence[Work]) -> list[dict[str, Any]]:
        labels, probabilities = output
        parts, offset = [], 0
        for work in batch:
            end = offset + work.units
            parts.append({"labels": labels[offset:end].tolist(),
                          "probabilities": np.round(probabilities[offset:end], 6).tolist()})
            offset = end
        return parts
