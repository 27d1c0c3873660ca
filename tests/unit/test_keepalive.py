from services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, Window, window

CONFIG = KeepAliveConfig()


def histogram(idle_times: list[int]) -> IdleHistogram:
    h = IdleHistogram.empty(CONFIG)
    for t in idle_times:
        h = h.observe(t)
    return h


def test_thin_history_falls_back_to_the_fixed_keep_alive() -> None:
    assert window(histogram([30, 30, 30]), CONFIG) == Window(0, 10, "fixed: thin or out-of-range history")


def test_mostly_out_of_range_history_falls_back() -> None:
    assert window(histogram([600] * 20 + [5] * 8), CONFIG).reason.startswith("fixed")


def test_a_periodic_deployment_is_prewarmed_just_before_its_next_call() -> None:
    got = window(histogram([30, 30, 31, 29, 30, 30, 31, 29, 30, 30]), CONFIG)
    assert got == Window(26, 10, "histogram")  # loaded from minute 26 to 36 after each call


def test_a_chatty_deployment_stays_loaded_without_a_gap() -> None:
    got = window(histogram([0, 1, 0, 2, 1, 0, 1, 3, 0, 1]), CONFIG)
    assert got.prewarm_min == 0 and got.keepalive_min >= 4
