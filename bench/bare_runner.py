"""The reference for bench/runner.py: the same BentoML service shape, model and adaptive
batcher, without edgeinfer's accounting, usage events, outbox, metrics or heartbeats.

    bentoml serve bench.bare_runner:BareRunner   (BARE_MODEL_PATH, BARE_FRAMEWORK)
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import bentoml

from edgeinfer.services.runner.answers import json_answer
from edgeinfer.services.runner.batcher import MicroBatcher
from edgeinfer.services.runner.device import Device, MonotonicTimer
from edgeinfer.services.runner.models import load_model
from edgeinfer.services.runner.models.base import run_alone
from edgeinfer.services.runner.traffic_timeout import install as install_releasing_timeout

# As the runner does: BentoML's request timeout holds every request's objects for 60 s, and
# the growing heap slows both services alike (services/runner/traffic_timeout.py).
install_releasing_timeout()


@bentoml.service(name="bare_runner", workers=1, traffic={"timeout": 60})
class BareRunner:
    def __init__(self) -> None:
        with open(os.environ["BARE_MODEL_PATH"], "rb") as f:
            self.model = load_model(os.environ.get("BARE_FRAMEWORK", "onnx"), f.read(),
                                    Device("cpu", "cpu", "cpu"))
        for _ in range(5):
            run_alone(self.model, self.model.warm_input())
        self.batcher = MicroBatcher(self.model, MonotonicTimer(), lambda request, part: None)
        self._task: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def start(self) -> None:
        self._task = asyncio.create_task(self.batcher.run())
        gc.collect()  # as the runner does once it is loaded: the startup heap out of GC's way
        gc.freeze()

    @bentoml.api(route="/infer")
    async def infer(self, inputs: list[Any]) -> dict[str, Any]:
        part, _ = await self.batcher.submit(self.model.validate(inputs), "b")
        return json_answer({"outputs": part.outputs})  # type: ignore[return-value]  # as the runner
