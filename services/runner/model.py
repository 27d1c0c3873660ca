"""Models a runner serves. ONNX graphs only: tenant artifacts are never unpickled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class InvalidInput(ValueError):
    """The request's input does not fit the model's schema; it never reaches the device."""


@dataclass
class OnnxModel:
    session: Any
    input_name: str
    features: int
    output_names: list[str]

    @classmethod
    def load(cls, data: bytes) -> OnnxModel:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread: the runner owns one device slot; more threads would make a
        # request's measured time depend on what else runs on the machine.
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(data, sess_options=options,
                                       providers=["CPUExecutionProvider"])
        (first,) = session.get_inputs()
        features = first.shape[-1]
        if not isinstance(features, int):
            raise ValueError("the model's input must have a fixed feature dimension")
        return cls(session, first.name, features, [o.name for o in session.get_outputs()])

    def validate(self, inputs: list[list[float]]) -> np.ndarray:
        if not inputs:
            raise InvalidInput("inputs must hold at least one row")
        if len(inputs) > 1024:
            raise InvalidInput("at most 1024 rows per request")
        for i, row in enumerate(inputs):
            if len(row) != self.features:
                raise InvalidInput(f"row {i} has {len(row)} values; this model takes {self.features}")
        array = np.asarray(inputs, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InvalidInput("inputs must be finite numbers")
        return array

    def run(self, array: np.ndarray) -> dict[str, Any]:
        label, probabilities = self.session.run(self.output_names, {self.input_name: array})
        return {"labels": label.tolist(), "probabilities": np.round(probabilities, 6).tolist()}
