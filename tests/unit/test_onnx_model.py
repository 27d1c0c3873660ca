"""The ONNX family with the real digits classifier: served on a CPU slot, and never run on
the CPU when the runner was given a GPU (onnxruntime would fall back with only a warning,
and CPU work would be billed as GPU time)."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.services.runner.device import Device
from edgeinfer.services.runner.models import load_model
from edgeinfer.services.runner.models.base import run_alone


def test_digits_on_a_cpu_slot() -> None:
    model = load_model("onnx", digits_onnx(), Device("cpu", "cpu", "cpu"))
    answer = run_alone(model, model.validate([sample_digit()]))
    assert len(answer["labels"]) == 1 and len(answer["probabilities"][0]) == 10


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider: nothing to refuse")
def test_a_gpu_class_without_onnxruntimes_cuda_provider_is_refused() -> None:
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        load_model("onnx", digits_onnx(), Device("cuda", "cuda:0 test", "cuda:0"))
