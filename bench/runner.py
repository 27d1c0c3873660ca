"""The runner with and without edgeinfer's accounting and outbox, side by side in one run:
the same BentoML service shape, model and batcher, one worker each, on this machine's CPU.

    .venv/bin/python bench/runner.py [--seconds 5] [--model digits|minilm] [--rounds 3] [--pin] [--aa]

Reports per concurrency (wrk, 1 / 8 / 64 connections): req/s, p50 and p99; cold start
(process spawn → ready: edgeinfer's first ready heartbeat, bare BentoML's /readyz); peak
RSS of each process tree under load. Needs Debian's wrk. Prints figures; not a test.
With several rounds it also prints the median of the per-round ratios with a bootstrap
95 % interval (sides of a round run back to back). --aa adds a second process of each side:
the A/A ratios are the noise floor, and the pooled ratio (both edgeinfer processes against
both bare ones) halves what one process's luck adds. That luck is real here: two identical
runner processes started together differ by ~1 % for as long as they live (code and heap
layout), so one invocation's single-pair ratio moved between −1 % and −5 % for one build.
On a shared 2-core VM use e.g. --rounds 20 --seconds 2 --pin --aa.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import PeakRss

from edgeinfer.services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor
from edgeinfer.services.registry.demo_model import digits_onnx, minilm_artifact, sample_digit
from edgeinfer.shared.artifacts import put_artifact
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.embedded import EmbeddedNats, free_port, start_nats
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import pops_from_env

ROOT = Path(__file__).resolve().parent.parent
WRK_HEADERS: dict[str, str] = {}  # sent with every wrk request: the signed-hop token


# Frames of edgeinfer's own per-request and background work in the runner's worker: what
# the bare service does not run. Their share of the worker's CPU samples bounds the
# throughput edgeinfer costs a CPU-bound worker, free of the run-to-run noise of req/s.
OWN_FRAMES = re.compile(r"Runner\._book|Outbox\.|Spool\.|Ledger\.|Runner\._beat|_heartbeats|"
                        r"_watch_supervisor|/nats/|_RunnerMetrics|Runner\.counters|new_id")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # in this venv, activated or not
    return str(beside) if beside.exists() else shutil.which("py-spy")


def worker_pid(arbiter_pid: int) -> int:
    """BentoML's worker under its arbiter: the child that has used the most CPU."""
    children = psutil.Process(arbiter_pid).children(recursive=True)
    return max(children, key=lambda p: p.cpu_times().user).pid if children else arbiter_pid


def own_share(url: str, body: str, connections: int, seconds: float, work: Path,
              arbiter_pid: int) -> tuple[float, int]:
    """(share of the worker's CPU samples in OWN_FRAMES, samples) over a wrk run, by py-spy."""
    raw = work / f"profile-{arbiter_pid}.txt"
    spy = subprocess.Popen([py_spy() or "py-spy", "record", "-p", str(worker_pid(arbiter_pid)), "-d",
                            str(int(seconds)), "-r", "250", "-f", "raw", "-o", str(raw),
                            "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrk(url, body, connections, seconds, work, arbiter_pid)
    spy.wait()
    total = own = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            total += int(count)
            own += int(count) if OWN_FRAMES.search(stack) else 0
    return own / max(total, 1), total


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its descendants."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    times = [p.cpu_times() for p in procs]
    return sum(t.user for t in times), sum(t.system for t in times)


# --pin: the servers' process trees on the last CPU, wrk and everything else on the rest, so
# the load generator and NATS never take the server's core (on 2 shared cores they do, and
# that is most of the run-to-run noise).
SERVER_CPUS: set[int] | None = None
CLIENT_CPUS: set[int] | None = None


def pin_cpus() -> None:
    global SERVER_CPUS, CLIENT_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    SERVER_CPUS, CLIENT_CPUS = {cpus[-1]}, set(cpus[:-1])
    os.sched_setaffinity(0, CLIENT_CPUS)  # this process, and NATS started after it


def pin_tree(pid: int) -> None:
    if SERVER_CPUS is None:
        return
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        p.cpu_affinity(sorted(SERVER_CPUS))


def wrk(url: str, body: str, connections: int, seconds: float, work: Path,
        pid: int) -> tuple[float, str, str, float, float]:
    """(req/s, p50, p99, CPU µs the server's process tree spent per request, of which in
    the kernel)."""
    pin_tree(pid)  # BentoML may have replaced a worker since the last run
    cpu_before = tree_cpu_s(pid)
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in WRK_HEADERS.items())
                      +                       f"wrk.body = [==[{body}]==]\n")
    threads = min(2, connections, len(CLIENT_CPUS) if CLIENT_CPUS else 2)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}",
                          f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    user_s, system_s = (after - before for after, before in zip(tree_cpu_s(pid), cpu_before, strict=True))
    rate = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    requests = int(next(line.split()[0] for line in out.splitlines() if " requests in " in line))
    pcts = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.strip().startswith(("50%", "99%"))}
    if "Non-2xx" in out:
        print("    " + next(line for line in out.splitlines() if "Non-2xx" in line).strip())
    per_request = 1e6 / max(1, requests)
    return (rate, pcts.get("50%", "?"), pcts.get("99%", "?"), (user_s + system_s) * per_request,
            system_s * per_request)


WrkRun = tuple[float, str, str, float, float]


def pooled(a: list[WrkRun], b: list[WrkRun]) -> list[WrkRun]:
    """Two processes' runs of one round as one: mean req/s and mean CPU per request."""
    return [((x[0] + y[0]) / 2, "", "", (x[3] + y[3]) / 2, (x[4] + y[4]) / 2)
            for x, y in zip(a, b, strict=True)]


def paired_ratio(ours: list[WrkRun], reference: list[WrkRun]) -> str:
    """Per-round ratios of req/s and of CPU per request (its inverse: what a CPU-bound
    worker's throughput follows), as medians with a bootstrap 95 % interval.

    The two sides of a round run back to back, so the host's slow minutes (this VM's
    neighbours move one service's req/s by ±20 % between rounds) hit both alike and
    partly cancel in the ratio; the interval says how well the rounds pin it down.
    """
    def summary(ratios: list[float]) -> str:
        rng = random.Random(0)
        boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        return (f"{statistics.median(ratios) - 1:+.1%} "
                f"[95 % CI {boot[50] - 1:+.1%} … {boot[1949] - 1:+.1%}]")

    rate = summary([o[0] / r[0] for o, r in zip(ours, reference, strict=True)])
    cpu = summary([r[3] / o[3] for o, r in zip(ours, reference, strict=True)])
    return f"paired over {len(ours)} rounds: req/s {rate}; 1 / CPU per request {cpu}"


def runner_pid(runner_id: str) -> int:
    """The BentoML arbiter the local executor started for this runner."""
    return next(p.pid for p in psutil.process_iter(["environ"])
                if (p.info["environ"] or {}).get("EDGEINFER_RUNNER_ID") == runner_id
                and p.parent() and p.parent().pid == os.getpid())


async def start_bare(work: Path, framework: str, name: str,
                     command_prefix: tuple[str, ...] = ()) -> tuple[int, subprocess.Popen[bytes]]:
    """The bare BentoML service on a free port, once its /readyz answers. Its log goes to a
    file, as the edgeinfer runner's does (BentoML writes an access-log line per request;
    /dev/null would make the reference cheaper than it is). Same environment as the
    local executor gives a runner, except edgeinfer's own keys."""
    port = free_port()
    env = {**os.environ, "BARE_MODEL_PATH": str(work / "model.bin"), "BARE_FRAMEWORK": framework,
           "BENTOML_HOME": str(work / f"{name}-home"), "BENTOML_DO_NOT_TRACK": "True",
           "OMP_NUM_THREADS": "1"}
    with open(work / f"{name}.log", "ab") as log:
        process = subprocess.Popen([*command_prefix, sys.executable, "-m", "bentoml", "serve",
                                    "bench.bare_runner:BareRunner", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5)).status_code == 200:
                    return port, process
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)


MODELS = {  # name: (framework, artifact, one request's inputs)
    "digits": ("onnx", digits_onnx, lambda: [sample_digit(0)]),
    "minilm": ("sentence-embedding", minilm_artifact,
               lambda: ["Nearest-PoP routing keeps inference latency low for every tenant."]),
}


async def set_up(model_name: str, purpose: str) -> tuple[Path, EmbeddedNats, Any, Subjects,
                                                         Deployment, bytes]:
    """A work dir with embedded NATS, the model in the registry's artifact store and on
    disk (`model.bin`, for the bare service), and the deployment a runner serves.
    Returns (work dir, NATS, its client, subjects, deployment, model bytes)."""
    framework, artifact, _ = MODELS[model_name]
    work = Path(tempfile.mkdtemp(prefix=f"edgeinfer-bench-{purpose}-"))
    nats = start_nats(work)
    nc = await connect(nats.url, "bench")
    subjects = Subjects("edgeinfer")
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    model = artifact()
    digest = await put_artifact(js, subjects.artifact_bucket, model)
    (work / "model.bin").write_bytes(model)
    deployment = Deployment(id="dep_bench", tenant_id="ten_bench", name=model_name,
                            model_name=model_name, model_version="1", framework=framework,
                            artifact_digest=digest, gpu_class="cpu", allowed_pops=["eu-west"],
                            min_replicas=1, max_replicas=1)
    return work, nats, nc, subjects, deployment, model


async def main(seconds: float, model_name: str, rounds: int, concurrencies: list[int],
               aa: bool = False, profile: bool = False, pin: bool = False) -> None:
    if pin:
        pin_cpus()
    framework, _, inputs = MODELS[model_name]
    work, nats, nc, subjects, deployment, model = await set_up(model_name, "runner")
    ready_ids: set[str] = set()

    async def on_beat(msg) -> None:
        beat = json.loads(msg.data)
        if beat["state"] == "ready":
            ready_ids.add(beat["runner_id"])

    async def until_ready(runner_id: str) -> None:
        async with asyncio.timeout(300):
            while runner_id not in ready_ids:
                await asyncio.sleep(0.01)

    await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    executor = LocalProcessExecutor(LocalExecutorConfig(nats.url, "edgeinfer", work,
                                                        pops_from_env(), Decimal(1)))
    bare = twin = None
    ours_twin: tuple[str, int] | None = None  # (url, arbiter pid) of a second runner, with --aa
    try:
        t0 = time.monotonic()
        replica = await executor.start(deployment, "eu-west", 0)
        await until_ready(replica.runner_id)
        ours_first = time.monotonic() - t0  # fetches the artifact from the object store
        await executor.stop(replica)
        t0 = time.monotonic()
        replica = await executor.start(deployment, "eu-west", 0)
        await until_ready(replica.runner_id)
        ours_cold = time.monotonic() - t0  # the PoP's disk cache has it

        t0 = time.monotonic()
        bare_port, bare = await start_bare(work, framework, "bare")
        bare_cold = time.monotonic() - t0
        if aa:  # a second process of each side: A/A noise, and pooled ratios
            twin_port, twin = await start_bare(work, framework, "bare-2")
            second = await executor.start(deployment, "eu-west", 1)
            await until_ready(second.runner_id)
            ours_twin = (f"{second.url}/infer", runner_pid(second.runner_id))

        # One token for every request (a router signs one each): its check is in the figures,
        # and the bare runner, which checks nothing, ignores the header.
        signer = HopSigner()
        await signer.publish(nc.jetstream(), subjects.hop_keys_bucket)
        WRK_HEADERS.update(signer.headers("ten_bench", "dep_bench", ttl_s=24 * 3600))
        body = json.dumps({"inputs": inputs()})
        ours_pid = runner_pid(replica.runner_id)
        rss = {"edgeinfer": PeakRss(ours_pid), "bare": PeakRss(bare.pid)}
        for watcher in rss.values():
            watcher.start()
        print(f"model {model_name} ({framework})" + (f"; servers pinned to CPU {sorted(SERVER_CPUS)}, "
              f"wrk and NATS to {sorted(CLIENT_CPUS)}" if SERVER_CPUS else ""))
        print(f"cold start (spawn → ready): edgeinfer runner {ours_cold:.2f} s with the "
              f"artifact in the PoP's cache ({ours_first:.2f} s on the first start, fetching "
              f"{len(model) / 2**20:.0f} MB from the registry), bare BentoML {bare_cold:.2f} s "
              "(model file on local disk)")
        # Alternating order, several rounds, medians: on 2 shared cores one run of either
        # side varies by ±10 %, more than the difference being measured.
        for c in concurrencies:
            targets = [("bare", f"http://127.0.0.1:{bare_port}/infer", bare.pid),
                       ("edgeinfer", f"{replica.url}/infer", ours_pid)]
            if twin is not None and ours_twin is not None:
                targets.insert(1, ("bare-2", f"http://127.0.0.1:{twin_port}/infer", twin.pid))
                targets.append(("edgeinfer-2", *ours_twin))
            runs: dict[str, list[WrkRun]] = {t[0]: [] for t in targets}
            for round_ in range(rounds):
                for name, url, pid in targets if round_ % 2 == 0 else targets[::-1]:
                    runs[name].append(await asyncio.to_thread(wrk, url, body, c, seconds, work, pid))
            medians = {name: statistics.median(r[0] for r in results)
                       for name, results in runs.items()}
            for name, results in runs.items():
                rates = ", ".join(f"{r[0]:.0f}" for r in results)
                p50s = ", ".join(r[1] for r in results)
                p99s = ", ".join(r[2] for r in results)
                cpu = statistics.median(r[3] for r in results)
                kernel = statistics.median(r[4] for r in results)
                print(f"  c={c:<3d} {name:10s} median {medians[name]:7.0f} req/s  "
                      f"(runs {rates})  p50 {p50s}  p99 {p99s}  CPU {cpu:.0f} µs/request "
                      f"({kernel:.0f} in the kernel)")
            print(f"  c={c:<3d} edgeinfer / bare: {medians['edgeinfer'] / medians['bare'] - 1:+.1%} "
                  f"req/s (medians); {paired_ratio(runs['edgeinfer'], runs['bare'])}")
            if "bare-2" in runs:
                print(f"  c={c:<3d} A/A noise, bare-2 / bare: "
                      f"{paired_ratio(runs['bare-2'], runs['bare'])}")
                print(f"  c={c:<3d} A/A noise, edgeinfer-2 / edgeinfer: "
                      f"{paired_ratio(runs['edgeinfer-2'], runs['edgeinfer'])}")
                ours_pooled = pooled(runs["edgeinfer"], runs["edgeinfer-2"])
                bare_pooled = pooled(runs["bare"], runs["bare-2"])
                print(f"  c={c:<3d} pooled, both edgeinfer / both bare: "
                      f"{paired_ratio(ours_pooled, bare_pooled)}")
        if profile:
            if py_spy() is None:
                print("py-spy not found: pip install -e '.[bench]' for the CPU-sample breakdown")
            else:
                c = concurrencies[0]
                for name, url, pid in (("edgeinfer", f"{replica.url}/infer", ours_pid),
                                       ("bare", f"http://127.0.0.1:{bare_port}/infer", bare.pid)):
                    share, samples = own_share(url, body, c, max(seconds, 10), work, pid)
                    print(f"  c={c:<3d} {name:10s} edgeinfer's own code: {share:.2%} of the "
                          f"worker's CPU samples ({samples} samples, py-spy at 250 Hz; ±"
                          f"{(share * (1 - share) / max(samples, 1)) ** 0.5:.2%})")
        for name, watcher in rss.items():
            watcher.running = False
            print(f"peak RSS under load, {name}: {watcher.peak / 2**20:.0f} MB (arbiter + worker)")
    finally:
        await executor.stop_all()
        for proc in (bare, twin):
            if proc is None:
                continue
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                p.kill()
        await nc.close()
        nats.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--aa", action="store_true",
                        help="a second process of each side: A/A noise and pooled ratios")
    parser.add_argument("--pin", action="store_true",
                        help="servers on the last CPU, wrk, NATS and this script on the others")
    parser.add_argument("--profile", action="store_true",
                        help="sample both workers with py-spy at the first concurrency: the "
                             "share of CPU in edgeinfer's own code (accounting, outbox, NATS)")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.model, args.rounds, args.concurrency, args.aa,
                     args.profile, args.pin))
