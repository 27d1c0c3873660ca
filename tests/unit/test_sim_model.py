import pytest

from edgeinfer.services.autoscaler.keepalive import KeepAliveConfig, Window
from edgeinfer.services.sim.model import (
    KUBERNETES_HPA,
    HybridHistogram,
    fixed_keepalive,
    is_warm,
    loaded_between,
    simulate,
)


@pytest.mark.parametrize(
    ("window", "nxt", "loaded", "warm"),
    [
        pytest.param(Window(0, 10), 5, 4, True, id="keep-alive-covers-the-gap"),
        pytest.param(Window(0, 10), 10, 9, True, id="last-kept-slot-is-warm"),
        pytest.param(Window(0, 10), 11, 10, False, id="one-slot-too-late"),
        pytest.param(Window(26, 10), 30, 4, True, id="prewarmed-before-the-call"),
        pytest.param(Window(26, 10), 20, 0, False, id="called-before-prewarm"),
        pytest.param(Window(26, 10), 40, 10, False, id="called-after-the-window"),
    ],
)
def test_window_slots(window: Window, nxt: int, loaded: int, warm: bool) -> None:
    assert loaded_between(0, nxt, window) == loaded
    assert is_warm(0, nxt, window) is warm


def test_fixed_keep_alive_counts_cold_starts_and_idle_time() -> None:
    # Calls at minutes 0, 5 and 30 with a 10-minute keep-alive; the trace ends at 60.
    result = simulate([(0, 1), (5, 2), (30, 1)], fixed_keepalive(10), 60, duration_s=1.0)
    assert (result.invocations, result.cold_starts) == (4, 2)
    # loaded: slot 0, 1-4, 5, 6-15, 30, 31-40 = 1 + 4 + 1 + 10 + 1 + 10
    assert result.loaded_slots == 27
    assert result.busy_s == 4.0
    assert result.idle_s == pytest.approx(27 * 60 - 4.0)


def test_hpa_never_scales_to_zero() -> None:
    result = simulate([(0, 1), (500, 1)], KUBERNETES_HPA, 1000, duration_s=1.0)
    assert result.cold_starts == 1 and result.loaded_slots == 1000


def test_hybrid_learns_a_periodic_deployment() -> None:
    events = [(30 * i, 1) for i in range(40)]
    hybrid = simulate(events, HybridHistogram(KeepAliveConfig()), 1200, duration_s=1.0)
    fixed = simulate(events, fixed_keepalive(10), 1200, duration_s=1.0)
    assert fixed.cold_starts == 40  # every call is 30 minutes after the last
    assert hybrid.cold_starts <= 9  # cold only while history is thin
    assert hybrid.loaded_slots < simulate(events, fixed_keepalive(30), 1200, 1.0).loaded_slots
