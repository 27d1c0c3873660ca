"""Router overhead, side by side in one run: direct calls vs through the router vs through
nginx (keep-alive upstream, the reference proxy), against the same minimal backend.

    .venv/bin/python bench/router.py [--seconds 5]

Needs Debian's nginx and wrk. Starts embedded NATS + PostgreSQL, the real api, registry
and router (`edgeinfer run api registry router`), a minimal ASGI backend that speaks the
runner's protocol (bench/echo_runner.py), registered with the router by heartbeats as a
ready runner. Then: fixed-rate latency (open loop, 100/500/1000 req/s) and saturation
throughput (wrk, 32 connections) for each path, and the pure routing decision's cost on
100 PoPs × 10 replicas. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
import psutil
from common import pct

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.services.router.policy import ReplicaView, choose, order_pops
from edgeinfer.shared.bus import connect
from edgeinfer.shared.embedded import free_port, start_nats, start_postgres, wait_for_port
from edgeinfer.shared.events import RunnerHeartbeat, encode, new_id
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.subjects import Subjects

ROOT = Path(__file__).resolve().parent.parent
RATES = [int(r) for r in os.environ.get("BENCH_RATES", "100,500,1000").split(",") if r]
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend/infer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""



async def fixed_rate(url: str, body: bytes, headers: dict[str, str], rate: int,
                     seconds: float) -> tuple[list[float], int]:
    """Open loop: requests start on schedule whether or not earlier ones finished."""
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append((time.perf_counter() - t0) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, errors


def wrk(url: str, body: bytes, headers: dict[str, str], seconds: float, workdir: Path) -> float:
    """200 OK answers per second at saturation: refusals (503 saturated, 429) are answers
    too, and fast ones, so they are reported beside it but never counted as throughput."""
    script = workdir / f"post-{abs(hash(url))}.lua"
    header_lines = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    # A level-2 long bracket: the JSON body itself contains "]]". Answers are counted by
    # status, so refusals show instead of inflating req/s.
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [==[{body.decode()}]==]\n{header_lines}'
        'local threads = {}\n'
        'function setup(t) table.insert(threads, t) end\n'
        'function init() statuses = {} end\n'
        'function response(status) statuses[status] = (statuses[status] or 0) + 1 end\n'
        'function done()\n'
        '  local all = {}\n'
        '  for _, t in ipairs(threads) do\n'
        '    local s = t:get("statuses")\n'
        '    for k, v in pairs(s) do all[k] = (all[k] or 0) + v end\n'
        '  end\n'
        '  for k, v in pairs(all) do io.write("status " .. k .. ": " .. v .. "\\n") end\n'
        'end\n')
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{int(seconds)}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    statuses = [line for line in out.splitlines() if line.startswith("status ")]
    total = float(next(line.split()[1] for line in out.splitlines()
                       if line.startswith("Requests/sec")))
    answered = sum(int(line.split(": ")[1]) for line in statuses)
    ok = sum(int(line.split(": ")[1]) for line in statuses if line.startswith("status 200"))
    if not answered:
        raise RuntimeError(f"wrk counted no answers from {url}: {out}")
    if ok < answered:
        print(f"    wrk {url}: {', '.join(statuses)}")
        print(f"    → answered {total:.0f} req/s, of which 200 OK {total * ok / answered:.0f} req/s")
    return total * ok / answered


def decision_cost_us() -> float:
    rng = random.Random(3)
    pops = [f"pop{i}" for i in range(100)]
    replicas = [ReplicaView(f"r{p}-{k}", p, "http://x", True, 8, rng.randint(0, 7))
                for p in pops for k in range(10)]
    rtt = {p: rng.uniform(2, 200) for p in pops}
    by_pop: dict[str, list[ReplicaView]] = {}
    for r in replicas:
        by_pop.setdefault(r.pop, []).append(r)
    # As in the router: the PoP order is cached per (client region, deployment); the
    # replicas are grouped per PoP by the routing table.
    ordered = order_pops(pops, rtt)
    draw = random.Random(4).randrange
    number = 20_000
    return timeit.timeit(lambda: choose(ordered, by_pop, draw), number=number) / number * 1e6


async def heartbeats(nats_url: str, namespace: str, deployment_id: str, url: str,
                     stop: threading.Event) -> None:
    nc = await connect(nats_url, "bench-heartbeats")
    subjects = Subjects(namespace)
    while not stop.is_set():
        await nc.publish(subjects.heartbeat("eu-west", "rbench"), encode(RunnerHeartbeat(
            id=new_id(), source="bench", time=datetime.now(UTC), runner_id="rbench",
            pop="eu-west", region="eu-west", url=url, state="ready", gpu_class="cpu",
            gpu_share=Decimal(1), device="cpu", capacity=100_000, in_flight=0,
            deployment_id=deployment_id, model_version="1")))
        await asyncio.sleep(1.0)
    await nc.close()


async def real_runner(nats_url: str, work: Path, paths: dict[str, tuple[str, bytes, dict[str, str]]],
                      runner_body: bytes, seconds: float) -> None:
    """Once more against a real BentoML runner serving the digits model (the echo backend's
    heartbeats have stopped, so the router drops it within 3 s)."""
    from edgeinfer.services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor
    from edgeinfer.shared.bus import request
    from edgeinfer.shared.events import ListDeploymentsReply
    from edgeinfer.shared.topology import pops_from_env

    nc = await connect(nats_url, "bench")
    subjects = Subjects("edgeinfer")
    (deployment,) = (await request(nc, subjects.list_deployments, msgspec.Struct(),
                                   ListDeploymentsReply)).deployments
    ready = asyncio.Event()

    async def on_beat(msg: Any) -> None:
        if b'"state":"ready"' in msg.data and b"rbench" not in msg.data:
            ready.set()

    await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    executor = LocalProcessExecutor(LocalExecutorConfig(nats_url, "edgeinfer", work,
                                                        pops_from_env()))
    replica = await executor.start(deployment, "eu-west", 0)
    try:
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(3.5)  # the echo backend goes stale in the router's table
        signer = HopSigner()  # as a router would: the runner checks a signed token
        await signer.publish(nc.jetstream(), subjects.hop_keys_bucket)
        direct = (replica.url + "/infer", runner_body, {
            **paths["direct"][2], **signer.headers(deployment.tenant_id, deployment.id,
                                                   ttl_s=24 * 3600)})
        print("  real BentoML runner, digits model (ONNX, CPU slot):")
        for rate in (100, 300):
            d, _ = await fixed_rate(*direct, rate, seconds)
            r, errors = await fixed_rate(*paths["router"], rate, seconds)
            print(f"    {rate:4d} req/s  direct p50 {pct(d, .5):.2f} / p99 {pct(d, .99):.2f} ms;"
                  f"  router p50 {pct(r, .5):.2f} / p99 {pct(r, .99):.2f} ms  errors {errors}"
                  f"  added +{pct(r, .5) - pct(d, .5):.2f} / +{pct(r, .99) - pct(d, .99):.2f} ms")
        for name, path in (("direct", direct), ("router", paths["router"])):
            print(f"    saturation (wrk -c32)  {name:7s} {wrk(*path, seconds, work):7.0f} req/s 200 OK")
    finally:
        await executor.stop_all()
        await nc.close()


def seed(api: str) -> tuple[str, str, str]:
    """A tenant, its key, and a deployment pinned to eu-west: (tenant id, key, deployment id)."""
    admin = {"Authorization": "Bearer bench"}
    tenant = httpx.post(f"{api}/admin/tenants", json={"name": "bench"}, headers=admin).json()
    key = httpx.post(f"{api}/admin/tenants/{tenant['id']}/keys", json={},
                     headers=admin).json()["key"]
    # Admission limits far above what the machine can send: measure routing, not 429s.
    httpx.patch(f"{api}/admin/tenants/{tenant['id']}", headers=admin, json={
        "rate_limit_rps": 1e6, "rate_limit_burst": 10**6, "max_concurrency": 10**5,
    }).raise_for_status()
    auth = {"Authorization": f"Bearer {key}"}
    httpx.put(f"{api}/v1/models/digits/versions/1", content=digits_onnx(), headers=auth,
              timeout=60).raise_for_status()
    dep = httpx.put(f"{api}/v1/deployments/bench", headers=auth, json={
        "model": "digits", "version": "1", "pops": ["eu-west"]}).json()
    return tenant["id"], key, dep["id"]


async def main(seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-router-"))
    work.chmod(0o755)
    nats = start_nats(work)
    pg = start_postgres(work)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        backend_port, api_port, router_port, nginx_port = (free_port() for _ in range(4))
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "echo_runner.py"),
                                       str(backend_port)]))
        env = {**os.environ, "NATS_URL": nats.url, "DATABASE_URL": pg.url,
               "EDGEINFER_STATE_DIR": str(work), "EDGEINFER_API_PORT": str(api_port),
               "EDGEINFER_ROUTER_PORT": str(router_port), "EDGEINFER_ADMIN_TOKEN": "bench",
               "EDGEINFER_LOG_LEVEL": "WARNING"}
        procs.append(subprocess.Popen([str(Path(sys.executable).parent / "edgeinfer"), "run",
                                       "api", "registry", "router"], env=env))
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, backend=backend_port,
                                                           port=nginx_port))
        procs.append(subprocess.Popen([shutil.which("nginx") or "nginx", "-c",
                                       str(work / "nginx.conf"), "-g", "daemon off;"]))
        for port in (backend_port, api_port, router_port, nginx_port):
            wait_for_port(port, 60)

        _tenant, key, deployment_id = await asyncio.to_thread(
            seed, f"http://127.0.0.1:{api_port}")
        auth = {"Authorization": f"Bearer {key}"}
        # Heartbeats from a thread of their own: the load generator saturates this loop at
        # high rates, and late heartbeats would make the router drop the backend as dead.
        beats_stop = threading.Event()
        beats = threading.Thread(target=lambda: asyncio.run(heartbeats(
            nats.url, "edgeinfer", deployment_id, f"http://127.0.0.1:{backend_port}",
            beats_stop)), daemon=True)
        beats.start()

        inputs = {"inputs": [sample_digit(0)]}
        runner_body = msgspec.json.encode(inputs)
        json_h = {"Content-Type": "application/json"}
        paths = {
            "direct": (f"http://127.0.0.1:{backend_port}/infer", runner_body, json_h),
            "nginx": (f"http://127.0.0.1:{nginx_port}/", runner_body, json_h),
            "router": (f"http://127.0.0.1:{router_port}/v1/deployments/bench/infer",
                       msgspec.json.encode(inputs), {**json_h, **auth}),
        }
        # Warm-up: the key and deployment caches, the first heartbeat, connection pools.
        lat, errors = await fixed_rate(*paths["router"], rate=20, seconds=2)
        assert errors == 0, "the router does not serve the bench deployment"

        print(f"body {len(paths['router'][1])} B; {seconds:g} s per measurement; "
              "everything on the same 2 cores")
        for rate in RATES:
            results = {}
            for name, (url, body, headers) in paths.items():
                results[name] = await fixed_rate(url, body, headers, rate, seconds)
            d50, d99 = pct(results["direct"][0], 0.5), pct(results["direct"][0], 0.99)
            for name, (lat, errors) in results.items():
                p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
                added = "" if name == "direct" else f"   added +{p50 - d50:.2f} / +{p99 - d99:.2f} ms"
                print(f"  {rate:5d} req/s  {name:7s} p50 {p50:6.2f} ms  p99 {p99:7.2f} ms"
                      f"  errors {errors}{added}")
        if os.environ.get("BENCH_PROFILE"):
            # py-spy on the router process during a saturation run (collapsed stacks).
            spy = subprocess.Popen(["py-spy", "record", "-d", str(int(seconds)), "-r", "200",
                                    "-p", str(procs[1].pid), "-f", "raw", "-o",
                                    os.environ["BENCH_PROFILE"]])
            wrk(*paths["router"], seconds, work)
            spy.wait()
        router = psutil.Process(procs[1].pid)
        for name, (url, body, headers) in paths.items():
            cpu_before = sum(router.cpu_times()[:2])
            rate = wrk(url, body, headers, seconds, work)
            per_request = ""
            if name == "router":  # the router's process CPU time over the 200s it served
                used = sum(router.cpu_times()[:2]) - cpu_before
                per_request = f"   router CPU {used / (rate * int(seconds)) * 1e6:.0f} µs per 200 OK"
            print(f"  saturation (wrk -c32)  {name:7s} {rate:9.0f} req/s 200 OK{per_request}")
        print(f"  routing decision, 100 PoPs × 10 replicas: {decision_cost_us():.1f} µs")
        beats_stop.set()
        beats.join(5)
        await real_runner(nats.url, work, paths, runner_body, seconds)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            # Requests still queued when the real runner stopped are held for its cold start
            # (nothing here scales it again) until their scale-up timeout: up to 60 s.
            p.wait(90)
        nats.stop()
        pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    asyncio.run(main(parser.parse_args().seconds))
