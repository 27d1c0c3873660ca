"""The runner with and without edgeinfer's accounting and outbox, in instructions per request.

    .venv/bin/python bench/runner_instructions.py [--requests 300] [--concurrency 1 8]

bench/runner.py times both services with wrk; on a shared VM one service's req/s moves by
±20 % between rounds, which hides a 3 % difference. This counts instead: both services'
BentoML workers run under valgrind's callgrind, whose instruction counts repeat whatever
else the machine does. For each service and concurrency it sends a fixed number of
requests (after a warm-up) with counting switched on only for that window, and prints the
worker's instructions per request, edgeinfer's against bare BentoML's, and the C functions
where edgeinfer's worker spends the most extra.

Time-driven work is corrected for callgrind's ~40× slowdown, so that it weighs per request
what it weighs at full speed:
- heartbeats, the supervisor check and NATS pings run per second, not per request: an idle
  window of each worker measures that rate, and load windows subtract rate × duration;
- the outbox publishes what gathered during its linger (0.2 s): under callgrind that would
  be a publish per 2–3 requests instead of per ~40–80, so the runner gets a linger of
  `--linger-s` and the bench prints the events per published message it saw.
Left out of instruction counts: kernel time. The one system call edgeinfer adds per
request, the spool's write(2), is timed separately at full speed.
Needs valgrind (Debian's package). Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
from runner import MODELS, runner_pid, set_up, start_bare

from edgeinfer.services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor
from edgeinfer.services.runner.outbox import Spool
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.topology import pops_from_env

WORKER = "_bentoml_impl.worker.service"
GC = "gc_collect_main"  # CPython's cyclic collector, with what it calls


def callgrind(out_dir: Path, cache_sim: bool) -> tuple[str, ...]:
    # Counting starts switched off (imports and model loading are not measured) and is
    # switched on per window with callgrind_control; children are followed because the
    # BentoML worker is a child of its arbiter.
    return ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
            f"--callgrind-out-file={out_dir}/cg.%p", f"--cache-sim={'yes' if cache_sim else 'no'}")


def estimated_cycles(events: dict[str, int]) -> int:
    """KCachegrind's cycle estimate from callgrind's cache model: an L1 miss costs ~10
    cycles, a last-level miss ~100, on top of one per instruction. Instruction counts
    alone miss what a larger heap or more code costs in cache misses."""
    return (events["Ir"] + 10 * (events["I1mr"] + events["D1mr"] + events["D1mw"])
            + 100 * (events["ILmr"] + events["DLmr"] + events["DLmw"]))


def worker_of(root_pid: int) -> int:
    for p in psutil.Process(root_pid).children(recursive=True):
        if any(WORKER in part for part in p.cmdline()):
            return p.pid
    raise RuntimeError(f"no BentoML worker under pid {root_pid}")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


class Window:
    """Instructions a worker executes between `open()` and `close()`, with the dump's
    per-function counts (exclusive) for the diff."""

    def __init__(self, out_dir: Path, pid: int) -> None:
        self.out_dir, self.pid = out_dir, pid

    def open(self) -> None:
        control(self.pid, "-z")
        control(self.pid, "-i", "on")
        self.started = time.monotonic()

    def close(self) -> tuple[dict[str, int], float, Counter[str], int]:
        """(totals by event: Ir = instructions and, with the cache model, misses; seconds;
        exclusive instructions by function; instructions in Python's cyclic collector)."""
        control(self.pid, "-i", "off")
        seconds = time.monotonic() - self.started
        before = set(self.out_dir.glob(f"cg.{self.pid}.*"))
        control(self.pid, "-d")
        dump = (set(self.out_dir.glob(f"cg.{self.pid}.*")) - before).pop()
        text = dump.read_text()
        names = re.search(r"^events: (.+)$", text, re.M).group(1).split()
        totals = map(int, re.search(r"^totals: (.+)$", text, re.M).group(1).split())
        events = dict(zip(names, totals, strict=True))
        return events, seconds, functions(dump), functions(dump, inclusive=True)[GC]


def functions(dump: Path, inclusive: bool = False) -> Counter[str]:
    """Instructions per C function, exclusive or inclusive (file path and object dropped)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--show=Ir",
                          f"--inclusive={'yes' if inclusive else 'no'}", str(dump)],
                         capture_output=True, text=True, check=True).stdout
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S+)", line)
        if m and m.group(2) != "PROGRAM":
            name = m.group(2).rsplit(":", 1)[-1]
            counts[name] += int(m.group(1).replace(",", ""))
    return counts


async def send(url: str, body: dict, requests: int, concurrency: int,
               headers: dict[str, str]) -> None:
    left = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120, headers=headers) as http:
        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                (await http.post(url, json=body)).raise_for_status()

        await asyncio.gather(*(client() for _ in range(concurrency)))


def spool_write_us(line: bytes, appends: int = 20_000) -> float:
    """CPU µs (user + kernel: its page faults) of one spool append at full speed."""
    line += b"\n"
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "bench.jsonl", capacity=len(line) * appends)
        t0 = time.process_time()
        for _ in range(appends):
            spool.append(line)
        spent = time.process_time() - t0
        spool.close()
    return spent * 1e6 / appends


async def main(model_name: str, requests: int, warm_up: int, concurrencies: list[int],
               idle_s: float, linger_s: float, top: int, cache_sim: bool) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    framework, _, inputs = MODELS[model_name]
    work, nats, nc, subjects, deployment, _ = await set_up(model_name, "instructions")
    ready = asyncio.Event()
    published = Counter[str]()
    spooled_line = b""

    async def on_beat(msg) -> None:
        if json.loads(msg.data)["state"] == "ready":
            ready.set()

    async def on_usage(msg) -> None:
        nonlocal spooled_line
        event = json.loads(msg.data)
        published["messages"] += 1
        published["events"] += len(event.get("events", [event]))
        if not spooled_line and event.get("events"):
            spooled_line = json.dumps(event["events"][0], separators=(",", ":")).encode()

    await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    await nc.subscribe(subjects.usage("eu-west"), cb=on_usage)
    prefix = callgrind(work, cache_sim)
    os.environ["EDGEINFER_OUTBOX_LINGER_S"] = str(linger_s)  # the runner inherits it
    executor = LocalProcessExecutor(LocalExecutorConfig(
        nats.url, "edgeinfer", work, pops_from_env(), Decimal(1), command_prefix=prefix,
        stop_timeout_s=120))
    bare = None
    try:
        t0 = time.monotonic()
        replica = await executor.start(deployment, "eu-west", 0)
        bare_port, bare = await start_bare(work, framework, "bare", prefix)
        await asyncio.wait_for(ready.wait(), 600)
        print(f"model {model_name} ({framework}); both workers under callgrind, ready in "
              f"{time.monotonic() - t0:.0f} s; outbox linger {linger_s} s")
        ours_root = runner_pid(replica.runner_id)
        services = {"bare": (f"http://127.0.0.1:{bare_port}/infer", worker_of(bare.pid)),
                    "edgeinfer": (f"{replica.url}/infer", worker_of(ours_root))}
        body = {"inputs": inputs()}
        # The signed-hop token a router would send (checked by ours, ignored by the bare one).
        signer = HopSigner()
        await signer.publish(nc.jetstream(), subjects.hop_keys_bucket)
        headers = signer.headers("ten_bench", "dep_bench", ttl_s=24 * 3600)
        idle_rate: dict[str, float] = {}
        idle_cycles: dict[str, float] = {}
        for name, (url, pid) in services.items():
            await send(url, body, warm_up, max(concurrencies), headers)  # not counted
            await asyncio.sleep(linger_s + 1)  # the warm-up's usage published before the window
            window = Window(work, pid)
            window.open()
            await asyncio.sleep(idle_s)
            events, seconds, _, _ = window.close()
            idle_rate[name] = events["Ir"] / seconds
            if cache_sim:
                idle_cycles[name] = estimated_cycles(events) / seconds
        print(f"idle (heartbeats, supervisor check, NATS): bare {idle_rate['bare'] / 1e6:.2f} M "
              f"instructions/s, edgeinfer {idle_rate['edgeinfer'] / 1e6:.2f} M/s")
        for c in concurrencies:
            per_request: dict[str, float] = {}
            per_function: dict[str, Counter[str]] = {}
            gc_share: dict[str, float] = {}
            cycles: dict[str, float] = {}
            for name, (url, pid) in services.items():
                if name == "edgeinfer":
                    published.clear()
                window = Window(work, pid)
                window.open()
                await send(url, body, requests, c, headers)
                events, seconds, by_function, gc = window.close()
                per_request[name] = (events["Ir"] - idle_rate[name] * seconds) / requests
                if cache_sim:
                    cycles[name] = (estimated_cycles(events)
                                    - idle_cycles[name] * seconds) / requests
                per_function[name] = by_function
                gc_share[name] = gc / requests
                print(f"  c={c:<3d} {name:10s} {per_request[name] / 1e6:7.3f} M instructions "
                      f"per request ({requests} requests in {seconds:.0f} s under callgrind; "
                      f"{idle_rate[name] * seconds / 1e6:.0f} M of idle-rate work taken out), "
                      f"of which cyclic GC {gc_share[name] / 1e3:.0f} k")
            await asyncio.sleep(linger_s + 1)  # the last linger's publish
            extra = per_request["edgeinfer"] - per_request["bare"]
            print(f"  c={c:<3d} edgeinfer adds {extra / 1e3:.0f} k instructions per request: "
                  f"{extra / per_request['bare']:+.2%} of bare BentoML's; the outbox published "
                  f"{published['events']} events in {published['messages']} messages")
            if cache_sim:
                print(f"  c={c:<3d} estimated cycles (cache model) per request: bare "
                      f"{cycles['bare'] / 1e6:.3f} M, edgeinfer {cycles['edgeinfer'] / 1e6:.3f} M: "
                      f"{cycles['edgeinfer'] / cycles['bare'] - 1:+.2%}")
            # A full collection walks the whole heap (~10 ms) every few thousand requests: one
            # more or fewer in a window moves that window's figure, so it is also shown without.
            no_gc = {name: per_request[name] - gc_share[name] for name in per_request}
            print(f"  c={c:<3d} without cyclic GC: edgeinfer adds "
                  f"{(no_gc['edgeinfer'] - no_gc['bare']) / 1e3:.0f} k instructions per request: "
                  f"{no_gc['edgeinfer'] / no_gc['bare'] - 1:+.2%}")
            diff = Counter({f: (per_function["edgeinfer"][f] - per_function["bare"][f]) / requests
                            for f in per_function["edgeinfer"].keys() | per_function["bare"].keys()})
            print(f"  c={c:<3d} where (exclusive instructions per request, edgeinfer − bare): "
                  + ", ".join(f"{f} {d / 1e3:+.1f} k" for f, d in diff.most_common(top)))
        if spooled_line:
            print(f"kernel time left out above: a spool append ({len(spooled_line)}-byte event, "
                  f"its share of page faults) costs {spool_write_us(spooled_line):.2f} µs of CPU "
                  "at full speed")
    finally:
        await executor.stop_all()
        if bare is not None:
            for p in [psutil.Process(bare.pid), *psutil.Process(bare.pid).children(recursive=True)]:
                p.kill()
        await nc.close()
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--requests", type=int, default=1000, help="per service and concurrency")
    parser.add_argument("--warm-up", type=int, default=300,
                        help="requests per service before counting (the first collections of "
                             "the startup heap by Python's cyclic GC fall there)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--idle-s", type=float, default=20.0,
                        help="idle window that measures each worker's per-second work")
    parser.add_argument("--linger-s", type=float, default=8.0,
                        help="the runner's outbox linger under callgrind (0.2 s × its slowdown)")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also model the caches and print estimated cycles (~2× slower)")
    parser.add_argument("--top", type=int, default=12, help="functions listed in the diff")
    args = parser.parse_args()
    asyncio.run(main(args.model, args.requests, args.warm_up, args.concurrency, args.idle_s, args.linger_s,
                     args.top, args.cache_sim))
