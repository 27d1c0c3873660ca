"""Model families a runner serves, behind one interface (base.ServedModel)."""

from __future__ import annotations

from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models.base import InvalidInput, ServedModel, Work

__all__ = ["InvalidInput", "ServedModel", "Work", "load_model"]


def load_model(framework: str, artifact: bytes, device: Device,
               cuda_graphs: bool = True) -> ServedModel:
    """Imports lazily: a runner of one family never pays another's import time.
    `cuda_graphs`: on a GPU, replay small batches of text models from CUDA graphs."""
    if framework == "onnx":
        from edgeinfer.services.runner.models.onnx import OnnxModel

        return OnnxModel.load(artifact, device)
    if framework == "sentence-embedding":
        from edgeinfer.services.runner.models.embedding import EmbeddingModel

        return EmbeddingModel.load(artifact, device, cuda_graphs)
    raise ValueError(f"this runner cannot serve framework {framework!r}")
