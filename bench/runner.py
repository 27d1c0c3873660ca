"""The runner with and without edgeinfer's accounting and outbox, side by side in one run:
the same BentoML service shape and digits model, one worker each, on this machine's CPU.

    .venv/bin/python bench/runner.py [--seconds 5]

Reports per concurrency (wrk, 1 / 8 / 64 connections): req/s, p50 and p99; cold start
(process spawn → ready: edgeinfer's first ready heartbeat, bare BentoML's /readyz); peak
RSS of each process tree under load. Needs Debian's wrk. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
from common import PeakRss

from services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor
from services.registry.demo_model import digits_onnx, sample_digit
from shared.artifacts import put_artifact
from shared.bus import connect, ensure_streams
from shared.embedded import free_port, start_nats
from shared.events import Deployment
from shared.subjects import Subjects
from shared.topology import pops_from_env

ROOT = Path(__file__).resolve().parent.parent


def wrk(url: str, body: str, connections: int, seconds: float, work: Path) -> tuple[float, str, str]:
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{body}]==]\n")
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}",
                          f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    pcts = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.strip().startswith(("50%", "99%"))}
    if "Non-2xx" in out:
        print("    " + next(line for line in out.splitlines() if "Non-2xx" in line).strip())
    return rate, pcts.get("50%", "?"), pcts.get("99%", "?")


async def main(seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-runner-"))
    nats = start_nats(work)
    nc = await connect(nats.url, "bench")
    subjects = Subjects("edgeinfer")
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    model = digits_onnx()
    digest = await put_artifact(js, subjects.artifact_bucket, model)
    (work / "digits.onnx").write_bytes(model)
    deployment = Deployment(id="dep_bench", tenant_id="ten_bench", name="digits",
                            model_name="digits", model_version="1", framework="onnx",
                            artifact_digest=digest, gpu_class="cpu", allowed_pops=["eu-west"],
                            min_replicas=1, max_replicas=1)
    ready = asyncio.Event()

    async def on_beat(msg) -> None:
        if json.loads(msg.data)["state"] == "ready":
            ready.set()

    await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    executor = LocalProcessExecutor(LocalExecutorConfig(nats.url, "edgeinfer", work,
                                                        pops_from_env(), Decimal(1)))
    bare_port = free_port()
    bare = None
    try:
        t0 = time.monotonic()
        replica = await executor.start(deployment, "eu-west", 0)
        await asyncio.wait_for(ready.wait(), 120)
        ours_cold = time.monotonic() - t0

        env = {**os.environ, "BARE_MODEL_PATH": str(work / "digits.onnx"),
               "BENTOML_HOME": str(work / "bare-home"), "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        bare = subprocess.Popen([sys.executable, "-m", "bentoml", "serve",
                                 "bench.bare_runner:BareRunner", "--host", "127.0.0.1",
                                 "--port", str(bare_port)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    if (await http.get(f"http://127.0.0.1:{bare_port}/readyz", timeout=0.5)
                            ).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        bare_cold = time.monotonic() - t0

        body = json.dumps({"tenant_id": "ten_bench", "request_id": "b",
                           "deployment_id": "dep_bench", "inputs": [sample_digit(0)]})
        ours_pid = next(p.pid for p in psutil.process_iter(["environ"])
                        if (p.info["environ"] or {}).get("EDGEINFER_RUNNER_ID") == replica.runner_id
                        and p.parent() and p.parent().pid == os.getpid())
        rss = {"edgeinfer": PeakRss(ours_pid), "bare": PeakRss(bare.pid)}
        for watcher in rss.values():
            watcher.start()
        print(f"cold start (spawn → ready): edgeinfer runner {ours_cold:.2f} s, "
              f"bare BentoML {bare_cold:.2f} s")
        for c in (1, 8, 64):
            for name, url in (("bare", f"http://127.0.0.1:{bare_port}/infer"),
                              ("edgeinfer", f"{replica.url}/infer")):
                rate, p50, p99 = await asyncio.to_thread(wrk, url, body, c, seconds, work)
                print(f"  c={c:<3d} {name:10s} {rate:7.0f} req/s   p50 {p50:>8s}   p99 {p99:>8s}")
        for name, watcher in rss.items():
            watcher.running = False
            print(f"peak RSS under load, {name}: {watcher.peak / 2**20:.0f} MB (arbiter + worker)")
    finally:
        await executor.stop_all()
        if bare is not None:
            for p in [psutil.Process(bare.pid), *psutil.Process(bare.pid).children(recursive=True)]:
                p.kill()
        await nc.close()
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args().seconds))
