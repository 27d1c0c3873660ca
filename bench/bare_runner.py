"""The reference for bench/runner.py: the same BentoML service shape and model, without
edgeinfer's accounting, usage events or outbox.  bentoml serve bench.bare_runner:BareRunner"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from services.runner.device import Device
from services.runner.models import load_model
from services.runner.models.base import run_alone


@bentoml.service(name="bare_runner", workers=1, traffic={"timeout": 60})
class BareRunner:
    def __init__(self) -> None:
        with open(os.environ["BARE_MODEL_PATH"], "rb") as f:
            self.model = load_model(os.environ.get("BARE_FRAMEWORK", "onnx"), f.read(),
                                    Device("cpu", "cpu", "cpu"))
        run_alone(self.model, self.model.warm_input())

    @bentoml.api(route="/infer")
    async def infer(self, tenant_id: str, request_id: str, deployment_id: str,
                    inputs: list[Any]) -> dict[str, Any]:
        return {"outputs": run_alone(self.model, self.model.validate(inputs))}
