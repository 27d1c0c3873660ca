"""The runner's added work per request: accounting, usage event, spool append — timed alone.

    .venv/bin/python bench/accounting.py

Target (issue #3): under 20 µs per request. The reference in the same run is the model
call itself (the digits classifier, one row, onnxruntime on one CPU thread).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from services.registry.demo_model import digits_onnx, sample_digit
from services.runner.accounting import Ledger, ns_to_us
from services.runner.models.base import run_alone
from services.runner.models.onnx import OnnxModel
from services.runner.outbox import Spool
from shared.events import UsageEvent, encode, new_id

N = 20_000


def main() -> None:
    model = OnnxModel.load(digits_onnx())
    work = model.validate([sample_digit(0)])
    for _ in range(200):
        run_alone(model, work)
    t0 = time.perf_counter_ns()
    for _ in range(N):
        run_alone(model, work)
    model_us = (time.perf_counter_ns() - t0) / N / 1000

    spool = Spool(Path(tempfile.mkdtemp()), "bench")
    ledger = Ledger(share=Decimal("0.5"))
    now = datetime.now(UTC)
    template = UsageEvent(  # as the runner builds it once at start (runner/service.py)
        id="", source="runner/eu-west/r1", time=now, tenant_id="", request_id="",
        deployment_id="dep_x", model_version="1", runner_id="r1", pop="eu-west",
        region="eu-west", gpu_class="cpu", gpu_share=Decimal("0.5"), busy_us=0, gpu_us=0,
        started_at=now, ended_at=now)
    t0 = time.perf_counter_ns()
    for i in range(N):
        started = datetime.now(UTC)
        busy_us = ns_to_us(100_000 + i)
        ended = datetime.now(UTC)
        ledger, gpu_us = ledger.charge(busy_us)
        event = msgspec.structs.replace(
            template, id=new_id(), time=ended, tenant_id="ten_x", request_id="req",
            busy_us=busy_us, gpu_us=gpu_us, started_at=started, ended_at=ended)
        spool.append(encode(event))
    added_us = (time.perf_counter_ns() - t0) / N / 1000
    spool.close()
    print(f"model call (digits, 1 row):                 {model_us:6.1f} µs per request")
    print(f"accounting + usage event + spool append:    {added_us:6.1f} µs per request "
          "(target < 20 µs)")


if __name__ == "__main__":
    main()
