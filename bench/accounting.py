"""The runner's added work per request: accounting, usage event, spool append — timed alone;
then the outbox's publishing of those events to JetStream, per event.

    .venv/bin/python bench/accounting.py

Target (issue #3): under 20 µs per request. The reference in the same run is the model
call itself (the digits classifier, one row, onnxruntime on one CPU thread). The publish
runs in the runner's event loop too, off the request's path but on the same core: its CPU
time in this process (the NATS server's is not the runner's), per event, in batches as a
busy runner's outbox sends them (the events of one linger, `--per-drain`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.services.runner.accounting import Ledger, ns_to_us
from edgeinfer.services.runner.booking import Bookkeeper
from edgeinfer.services.runner.models.base import run_alone
from edgeinfer.services.runner.models.onnx import OnnxModel
from edgeinfer.services.runner.outbox import Outbox, Spool
from edgeinfer.services.runner.usage_lines import UsageLines
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.embedded import start_nats
from edgeinfer.shared.events import UsageEvent
from edgeinfer.shared.subjects import Subjects

N = 20_000


async def publish_cpu_per_event(template: UsageEvent, events: int, per_drain: int) -> float:
    """This process's CPU µs per event to publish `events` spooled events to JetStream,
    `per_drain` at a time, as the outbox does after each linger."""
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-outbox-"))
    nats = start_nats(work)
    nc = await connect(nats.url, "bench-outbox")
    try:
        js = nc.jetstream()
        subjects = Subjects("edgeinfer")
        await ensure_streams(js, subjects)
        outbox = Outbox(work / "spool", js, subjects.usage("eu-west"))
        now = datetime.now(UTC)
        books = Bookkeeper(Ledger(share=Decimal(1)), UsageLines(template), outbox)
        cpu = 0.0
        for _ in range(events // per_drain):
            for _ in range(per_drain):
                books.book("ten_x", "req", 100, now, now)
            t0 = time.process_time()
            await outbox.drain_once()
            cpu += time.process_time() - t0
        assert outbox.pending_events == 0
        outbox.close()
        return cpu / (events // per_drain * per_drain) * 1e6
    finally:
        await nc.close()
        nats.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(per_drain: int) -> None:
    model = OnnxModel.load(digits_onnx())
    work = model.validate([sample_digit(0)])
    for _ in range(200):
        run_alone(model, work)
    t0 = time.perf_counter_ns()
    for _ in range(N):
        run_alone(model, work)
    model_us = (time.perf_counter_ns() - t0) / N / 1000

    spool = Spool(Path(tempfile.mkdtemp()) / "bench.jsonl", capacity=64 << 20)
    ledger = Ledger(share=Decimal("0.5"))
    now = datetime.now(UTC)
    template = UsageEvent(  # as the runner builds it once at start (runner/service.py)
        id="", source="runner/eu-west/r1", time=now, tenant_id="", request_id="",
        deployment_id="dep_x", model_version="1", runner_id="r1", pop="eu-west",
        region="eu-west", gpu_class="cpu", gpu_share=Decimal("0.5"), busy_us=0, gpu_us=0,
        started_at=now, ended_at=now)
    books = Bookkeeper(ledger, UsageLines(template), spool)  # the runner's own booking
    t0 = time.perf_counter_ns()
    for i in range(N):
        started = datetime.now(UTC)
        busy_us = ns_to_us(100_000 + i)
        ended = datetime.now(UTC)
        books.book("ten_x", "req", busy_us, started, ended)
    added_us = (time.perf_counter_ns() - t0) / N / 1000
    spool.close()
    print(f"model call (digits, 1 row):                 {model_us:6.1f} µs per request")
    print(f"accounting + usage event + spool append:    {added_us:6.1f} µs per request "
          "(target < 20 µs)")
    publish_us = asyncio.run(publish_cpu_per_event(template, N, per_drain))
    print(f"outbox publish to JetStream:                {publish_us:6.1f} µs of CPU per event "
          f"({per_drain} events per drain)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-drain", type=int, default=200,
                        help="events per outbox drain: the requests of one linger (0.2 s)")
    main(parser.parse_args().per_drain)
