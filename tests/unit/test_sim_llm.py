"""The second-level LLM replay drives the live policy (decide()) and accounts GPU time."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.autoscaler.decide import ScaleConfig
from services.sim.llm import LlmPolicy, Request, load_llm_trace, simulate_llm

TRACE = Path(__file__).resolve().parents[3] / "shared" / "data" / "azure-llm-inference-2023-code.csv"


def test_a_burst_from_zero_waits_for_the_cold_start_then_scales_out() -> None:
    burst = [Request(10.0 + i * 0.01, 2.0) for i in range(40)]  # 40 requests in 0.4 s
    later = [Request(200.0, 1.0)]
    policy = LlmPolicy("kpa", "test", ScaleConfig(fallback_keepalive_s=30.0))
    result = simulate_llm(burst + later, policy, capacity=4, cold_start_s=5.0)
    assert result.requests == 41
    assert result.used_gpu_s == pytest.approx(40 * 2.0 + 1.0)  # every request served once
    assert result.waited >= 40  # nothing was warm at t=10 s
    assert result.cold_starts >= 2  # the panic window asked for more than one replica
    assert result.p99_wait_s >= 5.0


def test_the_trace_loads_with_token_proportional_gpu_time() -> None:
    if not TRACE.exists():
        pytest.fail(f"the LLM trace is missing at {TRACE}")
    requests = load_llm_trace(TRACE)
    assert len(requests) == 8819
    assert requests[0].at == 0.0 and 56 * 60 < requests[-1].at < 58 * 60
    assert all(r.gpu_s > 0 for r in requests)
