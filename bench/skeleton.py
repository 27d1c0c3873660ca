"""Walking-skeleton figures: `edgeinfer up` to ready, the stack's RSS, and the latency of
the printed curl (median of 100) — routed, side by side with a direct call to the runner.

    .venv/bin/python bench/skeleton.py            # embedded NATS + PostgreSQL, fresh state

Not a test: it prints figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
from common import pct

from edgeinfer.shared.bus import connect
from edgeinfer.shared.embedded import free_port
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.subjects import Subjects

N = 100



async def trusted_hop(ready: dict[str, Any]) -> dict[str, str]:
    """A signed-hop header from a key published as a router's: runners serve nothing else."""
    signer = HopSigner()
    nc = await connect(ready["nats_url"], name="bench-skeleton")
    try:
        await signer.publish(nc.jetstream(), Subjects(ready["namespace"]).hop_keys_bucket)
    finally:
        await nc.close()
    return signer.headers(ready["tenant_id"], ready["deployment_id"], ttl_s=3600)


def main() -> None:
    state = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-"))
    state.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update(EDGEINFER_STATE_DIR=str(state), EDGEINFER_API_PORT=str(free_port()),
               EDGEINFER_ROUTER_PORT=str(free_port()), EDGEINFER_LOG_LEVEL="WARNING")
    started = time.monotonic()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "edgeinfer"), "up"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(state / "up.log", "wb"))
    ready_file = state / "ready.json"
    while not ready_file.exists():
        if proc.poll() is not None:
            raise SystemExit(f"edgeinfer up failed; see {state / 'up.log'}")
        time.sleep(0.05)
    ready_s = time.monotonic() - started
    ready = json.loads(ready_file.read_text())
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        # Embedded PostgreSQL daemonizes (pg_ctl), so it is not a child: find it by its data dir.
        tree += [p for p in psutil.process_iter(["cmdline"])
                 if p not in tree and str(state) in " ".join(p.info["cmdline"] or [])]
        rss_mb = sum(p.memory_info().rss for p in tree) / 2**20
        from edgeinfer.services.registry.demo_model import sample_digit

        body = {"inputs": [sample_digit(0)]}
        headers = {"Authorization": f"Bearer {ready['api_key']}"}
        url = f"{ready['router_url']}/v1/deployments/{ready['deployment']}/infer"
        with httpx.Client(timeout=30) as http:
            for _ in range(20):  # warm the router's caches and connection pool
                http.post(url, json=body, headers=headers).raise_for_status()
            runner_url = http.post(url, json=body, headers=headers).json()["usage"]["runner_id"]
            routed = []
            for _ in range(N):
                t0 = time.perf_counter()
                r = http.post(url, json=body, headers=headers)
                routed.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            # The reference: the same request straight to the runner that served it.
            beats = _runner_urls(ready, state)
            direct_url = beats.get(runner_url)
            direct = []
            if direct_url:
                hop = asyncio.run(trusted_hop(ready))
                for _ in range(N):
                    t0 = time.perf_counter()
                    http.post(direct_url + "/infer", json=body, headers=hop).raise_for_status()
                    direct.append((time.perf_counter() - t0) * 1000)
        curl = []
        data = json.dumps(body)
        for _ in range(N):
            out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url,
                                  "-H", f"Authorization: Bearer {ready['api_key']}",
                                  "-H", "Content-Type: application/json", "-d", data],
                                 capture_output=True, text=True, check=True)
            curl.append(float(out.stdout) * 1000)
    finally:
        proc.send_signal(signal.SIGINT)
        stop_t0 = time.monotonic()
        proc.wait(120)
        stop_s = time.monotonic() - stop_t0
    print(f"edgeinfer up → ready:            {ready_s:.1f} s (embedded NATS + PostgreSQL, "
          "2 runners)")
    print(f"stack RSS at ready:               {rss_mb:.0f} MB ({len(tree)} processes)")
    print(f"printed curl, wall (curl -w):     median {statistics.median(curl):.2f} ms, "
          f"p99 {pct(curl, 0.99):.2f} ms  (n={N})")
    print(f"routed, keep-alive client:        median {statistics.median(routed):.2f} ms, "
          f"p99 {pct(routed, 0.99):.2f} ms")
    if direct:
        print(f"direct to the runner (reference): median {statistics.median(direct):.2f} ms, "
              f"p99 {pct(direct, 0.99):.2f} ms")
        print(f"router overhead at c=1:           median "
              f"+{statistics.median(routed) - statistics.median(direct):.2f} ms")
    print(f"Ctrl-C → all stopped:             {stop_s:.1f} s")


def _runner_urls(ready: dict[str, str], state: Path) -> dict[str, str]:
    """runner id → URL, from the runners' heartbeats (read off NATS)."""
    import asyncio

    import nats

    async def collect() -> dict[str, str]:
        nats_url = json.loads((state / "ready.json").read_text()).get("nats_url")
        nc = await nats.connect(nats_url)
        found: dict[str, str] = {}

        async def cb(msg) -> None:
            beat = msgspec.json.decode(msg.data)
            found[beat["runner_id"]] = beat["url"]

        await nc.subscribe("edgeinfer.runner.heartbeat.>", cb=cb)
        await asyncio.sleep(2.5)
        await nc.close()
        return found

    return asyncio.run(collect())


if __name__ == "__main__":
    main()
