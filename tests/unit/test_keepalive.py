import random

import pytest

from edgeinfer.services.autoscaler.keepalive import (
    NEVER,
    IdleHistogram,
    KeepAliveConfig,
    Window,
    cheapest_window,
    learned_times,
    prior_idle_times,
    window,
)

PERCENTILES = KeepAliveConfig(min_samples=8, cold_start_weight=None)
COST = KeepAliveConfig()  # the default: the cost rule


def histogram(idle_times: list[int], config: KeepAliveConfig = PERCENTILES,
              requests_each: int = 1) -> IdleHistogram:
    h = IdleHistogram.empty(config).record(0.0, requests_each)  # the first request
    for t in idle_times:
        h = h.record(float(t), requests_each)
    return h


def test_thin_history_falls_back_to_the_fixed_keep_alive() -> None:
    assert window(histogram([30, 30, 30]), PERCENTILES) == Window(
        0, 10, "fixed: thin or out-of-range history")
    assert window(histogram([30], COST), COST).reason.startswith("fixed")
    assert learned_times(histogram([30], COST), COST) == (0.0, None)


def test_mostly_out_of_range_history_falls_back() -> None:
    assert window(histogram([600] * 20 + [5] * 8), PERCENTILES).reason.startswith("fixed")
    assert window(histogram([600] * 20 + [5] * 8, COST), COST).reason.startswith("fixed")


def test_percentiles_prewarm_a_periodic_deployment_just_before_its_next_call() -> None:
    got = window(histogram([30, 30, 31, 29, 30, 30, 31, 29, 30, 30]), PERCENTILES)
    assert got == Window(26, 10, "histogram")  # loaded from minute 26 to 36 after each call


def test_percentiles_keep_a_chatty_deployment_loaded_without_a_gap() -> None:
    got = window(histogram([0, 1, 0, 2, 1, 0, 1, 3, 0, 1]), PERCENTILES)
    assert got.prewarm_min == 0 and got.keepalive_min >= 4


def test_records_count_requests_span_and_idle_times() -> None:
    h = IdleHistogram.empty(COST).record(0.0, 3).record(0.5, 2).record(2.5, 1).record(300.0, 1)
    assert (h.requests, h.span_min, h.samples, h.out_of_bounds) == (7, 303.0, 1, 1)
    assert h.counts[2] == 1 and h.out_of_bounds_min == 300


def test_cost_rule_worked_example_of_the_module_docstring() -> None:
    # Idle times 1 (×6) and 20 (×2) minutes, 40 requests over 46 minutes.
    h = IdleHistogram.empty(COST).record(0.0, 33)
    for t in [1, 1, 1, 20, 1, 1, 1, 20]:
        h = h.record(float(t), 1)
    assert (h.requests, h.span_min) == (41, 46.0)
    # A cold start weighs 8 × 46 / 41 = 9.0 idle minutes: 2 idle + 2 colds beats 38 idle.
    assert cheapest_window(h, 8.0).keepalive_min == 1
    # At 20 × 46 / 41 = 22.4 idle minutes each, covering both 20-minute gaps is cheaper.
    assert cheapest_window(h, 20.0) == Window(0, 20, "histogram: least idle + cold-start cost")


def test_cost_rule_prewarms_a_periodic_deployment_with_no_idle_time() -> None:
    got = window(histogram([30] * 6, COST, requests_each=14), COST)
    assert (got.prewarm_min, got.keepalive_min) == (30, 1)  # unloaded, back for minute 30
    # Called once each time: a cold start weighs 8 × 30 idle minutes, so the window also
    # covers some of the longer gaps the prior allows — idle only if the job is late.
    assert window(histogram([30] * 6, COST), COST).prewarm_min == 30


def test_cost_rule_keeps_a_rare_deployment_longer_than_a_busy_one_with_the_same_gaps() -> None:
    gaps = [1, 1, 1, 1, 1, 1, 15, 1, 1, 1, 1, 1, 1, 15]
    rare = window(histogram(gaps, COST, requests_each=1), COST)
    busy = window(histogram(gaps, COST, requests_each=50), COST)
    # The same cold start is 1/15 of the rare one's requests but 1/750 of the busy one's.
    assert rare.keepalive_min >= 15 > busy.keepalive_min


def test_cost_rule_never_unloads_when_every_unload_would_cost_more() -> None:
    # Gaps spread over the whole range: any window leaves some cold, and each cold start
    # weighs many idle minutes at weight 10,000.
    got = window(histogram([5, 60, 120, 200, 230, 400, 3, 90], COST),
                 KeepAliveConfig(cold_start_weight=10_000))
    assert got.keepalive_min == NEVER and learned_times(
        histogram([5, 60, 120, 200, 230, 400, 3, 90], COST),
        KeepAliveConfig(cold_start_weight=10_000))[1] == NEVER * 60.0


def test_a_saved_history_reads_back_the_same_and_into_a_narrower_histogram() -> None:
    from edgeinfer.services.autoscaler.history import KeepAliveRecord

    h = histogram([3, 3, 50, 400, 7], COST)
    record = KeepAliveRecord.of(h, 1_800_000_000.0)
    assert record.bins == {3: 2, 7: 1, 50: 1}
    assert record.histogram(COST) == h
    narrow = record.histogram(KeepAliveConfig(bins=10))
    assert narrow.samples == 3 and narrow.out_of_bounds == 2  # the 50 no longer fits


def test_cost_rule_prewarms_an_hourly_job_despite_a_stray_short_gap() -> None:
    # One 1-minute gap (a retry) used to pin the pre-warm candidate at minute 1 (the 5th
    # percentile), leaving only "keep the hour" or "cold every hour".
    got = window(histogram([1] + [60] * 8, COST, requests_each=14), COST)
    assert (got.prewarm_min, got.keepalive_min) == (60, 1)


def _brute_force_cost(h: IdleHistogram, weight: float) -> float:
    cold_cost = weight * h.span_min / max(h.requests, 1)
    total = h.samples + h.out_of_bounds
    gaps = [g for g, n in enumerate(h.counts) for _ in range(n)]
    best = float("inf")
    for first in range(1, len(h.counts)):
        for end in range(first, len(h.counts)):
            idle = sum(max(0, min(end, g - 1) - first + 1) for g in gaps if g >= first)
            idle += h.out_of_bounds * (end - first + 1)
            cold = total - sum(1 for g in gaps if first <= g <= end)
            best = min(best, idle + cold_cost * cold)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_cost_rule_finds_the_cheapest_of_all_windows(seed: int) -> None:
    rng = random.Random(seed)
    gaps = [rng.choice([rng.randint(1, 5), rng.randint(1, 40)]) for _ in range(rng.randint(2, 25))]
    beyond, requests_each = rng.randint(0, 3), rng.randint(1, 30)
    weight = rng.choice([0.5, 2.0, 8.0, 50.0])
    config = KeepAliveConfig(bins=30, cold_start_weight=weight, max_out_of_bounds=1.0)
    h = histogram(gaps + [100] * beyond, config, requests_each=requests_each)
    got = cheapest_window(h, weight)
    # Never unloading keeps the replica through every idle time: g − 1 idle minutes each
    # (minute g brings the next request), out-of-range ones included; no cold start.
    never_unload = sum(g - 1 for g in gaps + [100] * beyond)
    best_window = _brute_force_cost(h, weight)
    if got.keepalive_min == NEVER:
        assert never_unload < best_window + 1e-6, (never_unload, best_window)
        return
    first = got.prewarm_min or 1
    end = first + got.keepalive_min - 1
    cold_cost = weight * h.span_min / h.requests
    gap_list = [g for g, n in enumerate(h.counts) for _ in range(n)]
    idle = sum(max(0, min(end, g - 1) - first + 1) for g in gap_list if g >= first)
    idle += h.out_of_bounds * (end - first + 1)
    cold = h.samples + h.out_of_bounds - sum(1 for g in gap_list if first <= g <= end)
    assert abs((idle + cold_cost * cold) - best_window) < 1e-6
    assert best_window <= never_unload + 1e-6  # else never unloading was the answer


def test_the_prior_keeps_a_short_history_from_fitting_its_few_gaps_exactly() -> None:
    two = histogram([30, 30], COST)
    # On its own, two 30-minute gaps say: unload, be back for minute 30 only.
    got = cheapest_window(two, 8.0, prior=0.0)
    assert (got.prewarm_min, got.keepalive_min) == (30, 1)
    # The prior's unseen shorter and longer gaps make a window from the start cheaper.
    assert cheapest_window(two, 8.0, prior=1.0).prewarm_min == 0
    # Forty of them outweigh one pseudo idle time: unloaded until minute 30 again.
    assert cheapest_window(histogram([30] * 40, COST), 8.0, prior=1.0).prewarm_min == 30


def test_the_prior_is_one_idle_time_spread_log_uniformly_over_a_day() -> None:
    in_range, beyond, beyond_min = prior_idle_times(240, 1.0)
    assert abs(in_range.sum() + beyond - 1.0) < 1e-12
    assert in_range[0] == 0 and abs(in_range[1] / in_range[2] - 2.0) < 1e-12  # ∝ 1/m
    assert 240 * beyond <= beyond_min <= 1440 * beyond  # beyond the 4-hour histogram
