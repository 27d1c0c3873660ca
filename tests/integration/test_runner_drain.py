"""Scale-down drains first: the local executor asks the runner to drain (it answers 503 to
new requests at once and tells routers with a draining heartbeat), waits until nothing is in
flight, and only then stops the process tree — so no router sends to a runner whose server
is already closing its connections (a 502 for the tenant)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import httpx
import psutil

from edgeinfer.services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor
from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.shared.artifacts import put_artifact
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import Pop
from tests.hops import hop, trusted_signer


async def test_a_runner_drains_before_its_process_stops(nats_url: str, namespace: str,
                                                        tmp_path: Path) -> None:
    subjects = Subjects(namespace)
    nc = await connect(nats_url, "test-drain")
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    digest = await put_artifact(js, subjects.artifact_bucket, digits_onnx())
    deployment = Deployment(id="dep_drain", tenant_id="ten_drain", name="d", model_name="d",
                            model_version="1", framework="onnx", artifact_digest=digest,
                            gpu_class="cpu", allowed_pops=["eu-west"], min_replicas=1,
                            max_replicas=1)
    states: list[str] = []
    ready = asyncio.Event()

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        beat = json.loads(msg.data)
        states.append(beat["state"])
        if beat["state"] == "ready":
            ready.set()

    await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    executor = LocalProcessExecutor(LocalExecutorConfig(
        nats_url, namespace, tmp_path, {"eu-west": Pop("eu-west", "eu-west", "eu")}, Decimal(1)))
    try:
        replica = await executor.start(deployment, "eu-west", 0)
        await asyncio.wait_for(ready.wait(), 120)
        body = {"inputs": [sample_digit(0)]}
        signer = await trusted_signer(nats_url, namespace)
        async with httpx.AsyncClient(timeout=10, headers=hop(signer, "ten_drain",
                                                               "dep_drain")) as http:
            assert (await http.post(f"{replica.url}/infer", json=body)).status_code == 200
            pid = _runner_pid(replica.runner_id)
            stopping = asyncio.create_task(executor.stop(replica))
            while "draining" not in states:
                await asyncio.sleep(0.01)
            # Draining, not yet stopped: new requests are refused with 503 (routers retry or
            # hold them), and the routers have heard so from the heartbeat.
            refused = await http.post(f"{replica.url}/infer", json=body)
            assert refused.status_code == 503
            assert psutil.pid_exists(pid)
            await stopping
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert executor.running() == []
    finally:
        await executor.stop_all()
        await nc.close()


def _runner_pid(runner_id: str) -> int:
    for p in psutil.process_iter(["environ"]):
        if (p.info["environ"] or {}).get("EDGEINFER_RUNNER_ID") == runner_id:
            return p.pid
    raise AssertionError(f"no process for runner {runner_id}")
