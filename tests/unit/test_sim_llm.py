"""The second-level LLM replay drives the live policy (decide()) and accounts GPU time."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.services.autoscaler.decide import ScaleConfig
from edgeinfer.services.sim.llm import LlmPolicy, Request, load_llm_trace, simulate_llm


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


def test_the_trace_format_loads_with_token_proportional_gpu_time(tmp_path: Path) -> None:
    """The Azure LLM trace's own format (TIMESTAMP,ContextTokens,GeneratedTokens)."""
    trace = tmp_path / "azure-llm-inference-2023-code.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:17:03.9799600,4808,10\n"
                     "2023-11-16 18:17:04.0319600,3180,8\n"
                     "2023-11-16 18:18:03.9799600,100,200\n")
    requests = load_llm_trace(trace, prefill_s_per_token=0.001, decode_s_per_token=0.01)
    assert [round(r.at, 3) for r in requests] == [0.0, 0.052, 60.0]
    assert [round(r.gpu_s, 3) for r in requests] == [4.908, 3.26, 2.1]


def test_a_request_with_no_free_slot_nearby_is_routed_to_a_farther_pop() -> None:
    # One warm replica (capacity 1) in each PoP from the start; two long requests from the
    # first PoP's region at once: the router's choose() sends the second abroad.
    requests = [Request(10.0, 20.0), Request(10.01, 20.0)]
    policy = LlmPolicy("floor", "test", ScaleConfig(), min_replicas=1)
    one_pop = simulate_llm(requests, policy, capacity=1, cold_start_s=5.0)
    two_pops = simulate_llm(requests, policy, capacity=1, cold_start_s=5.0,
                            pops=("near", "far"), client_mix=(1.0, 0.0))
    assert one_pop.waited == 1  # the second waits for the first, or for a new replica
    assert two_pops.waited == 0 and two_pops.used_gpu_s == pytest.approx(40.0)
