"""The reference for bench/runner.py: the same BentoML service shape and model, without
edgeinfer's accounting, usage events or outbox.  bentoml serve bench.bare_runner:BareRunner"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from services.runner.model import OnnxModel


@bentoml.service(name="bare_runner", workers=1, traffic={"timeout": 60})
class BareRunner:
    def __init__(self) -> None:
        with open(os.environ["BARE_MODEL_PATH"], "rb") as f:
            self.model = OnnxModel.load(f.read())
        self.model.run(self.model.validate([[0.0] * self.model.features]))

    @bentoml.api(route="/infer")
    async def infer(self, tenant_id: str, request_id: str, deployment_id: str,
                    inputs: list[list[float]]) -> dict[str, Any]:
        return {"outputs": self.model.run(self.model.validate(inputs))}
