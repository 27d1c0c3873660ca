"""Live autoscaler latency: from a load step to the scale-up decision, and from a held
request's demand signal to the replica start — over real NATS, repeated.

    .venv/bin/python -m bench.autoscaler [--trials 20]     (from the repo root)

The autoscaler runs its real loop (1 s tick) with the heartbeat metrics source; runners'
heartbeats and the router's signals are published the way those services publish them.
The executor records starts instead of spawning processes (spawning is measured by
bench/runner.py's cold start). Target (issue #6): load step → decision within 2 s.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench.common import pct
from edgeinfer.services.autoscaler.service import AutoscalerConfig, AutoscalerService
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.embedded import start_nats
from edgeinfer.shared.events import (
    DemandSignal,
    Deployment,
    ListDeploymentsReply,
    RunnerHeartbeat,
    encode,
    new_id,
)
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import Pop
from tests.standins.recording_executor import RecordingExecutor

POPS = {"eu-west": Pop("eu-west", "eu-west", "eu")}


async def trial(nats_url: str, scenario: str) -> float:
    subjects = Subjects("b" + secrets.token_hex(4))  # a fresh namespace per trial
    nc = await connect(nats_url, "bench-autoscaler")
    await ensure_streams(nc.jetstream(), subjects)
    d = Deployment(id="dep_b", tenant_id="ten_b", name="b", model_name="m", model_version="1",
                   framework="onnx", artifact_digest="sha256:" + "0" * 64, gpu_class="cpu",
                   allowed_pops=["eu-west"], min_replicas=0 if scenario == "wake" else 1,
                   max_replicas=8)

    async def reply(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(encode(ListDeploymentsReply(deployments=[d])))

    await nc.subscribe(subjects.list_deployments, cb=reply)
    executor = RecordingExecutor()
    service = AutoscalerService(nc, subjects, executor, POPS, AutoscalerConfig(tick_s=1.0))
    await service.start()

    def signal(held: int, excess: float) -> bytes:
        return encode(DemandSignal(id=new_id(), source="router", time=datetime.now(UTC),
                                   deployment_id=d.id, held_requests=held, pop="eu-west",
                                   excess_concurrency=excess))

    try:
        if scenario == "wake":
            await asyncio.sleep(1.5)
            t0 = time.monotonic()
            await nc.publish(subjects.demand(d.id), signal(1, 0.0))
            while not executor.started:
                await asyncio.sleep(0.005)
            return executor.started[0][2] - t0
        while not executor.started:
            await asyncio.sleep(0.01)
        runner = next(iter(executor.replicas))
        beat = RunnerHeartbeat(
            id=new_id(), source="bench", time=datetime.now(UTC), runner_id=runner, pop="eu-west",
            region="eu-west", url="http://x", state="ready", gpu_class="cpu", gpu_share=Decimal(1),
            device="cpu", capacity=8, in_flight=0, deployment_id=d.id, model_version="1")
        for _ in range(8):  # a calm, ready replica
            await nc.publish(subjects.heartbeat("eu-west", runner), encode(beat))
            await asyncio.sleep(0.25)
        t0 = time.monotonic()
        full = msgspec_replace(beat, in_flight=8)
        while len(executor.started) < 2:
            await nc.publish(subjects.heartbeat("eu-west", runner), encode(full))
            await nc.publish(subjects.demand(d.id), signal(0, 24.0))
            await asyncio.sleep(0.5)
        return executor.started[1][2] - t0
    finally:
        await service.stop()
        await nc.close()


def msgspec_replace(beat: RunnerHeartbeat, **changes: object) -> RunnerHeartbeat:
    import msgspec

    return msgspec.structs.replace(beat, id=new_id(), **changes)


async def main(trials: int) -> None:
    nats = start_nats(Path(tempfile.mkdtemp(prefix="edgeinfer-bench-autoscaler-")))
    try:
        for scenario, label in (("step", "load step (replica full + refused load) → scale-up start"),
                                ("wake", "held request's demand signal → first replica start")):
            seconds = [await trial(nats.url, scenario) for _ in range(trials)]
            ms = sorted(s * 1000 for s in seconds)
            print(f"{label}: p50 {pct(ms, 0.5):.0f} ms, p99 {pct(ms, 0.99):.0f} ms, "
                  f"max {ms[-1]:.0f} ms over {trials} trials (tick 1 s; target < 2000 ms)")
    finally:
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    asyncio.run(main(parser.parse_args().trials))
