"""The device and its timing source: the CUDA path is checked here with injected events
(no GPU on this machine); it has not run on a real GPU yet unless an issue note says so."""

from __future__ import annotations

import pytest

from services.runner.device import CudaEventTimer, MonotonicTimer, select_device


class FakeEvent:
    """Records the order of calls; the GPU 'took' `ms` between the two records."""

    log: list[str] = []

    def __init__(self, at_ms: float) -> None:
        self.at_ms = at_ms

    def record(self) -> None:
        FakeEvent.log.append("record")

    def synchronize(self) -> None:
        FakeEvent.log.append("synchronize")

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.at_ms - self.at_ms


def test_cuda_timer_charges_event_time_not_host_time() -> None:
    clock = iter([10.0, 10.0 + 3.2505])  # the device worked 3.2505 ms
    FakeEvent.log = []
    timer = CudaEventTimer(lambda: FakeEvent(next(clock)))

    def launch(x: int) -> int:
        FakeEvent.log.append("work")
        return x * 2

    result, busy_ns = timer.measure(launch, 21)
    assert result == 42
    assert busy_ns == 3_250_500
    # The end event is recorded after the work and waited for before the time is read.
    assert FakeEvent.log == ["record", "work", "record", "synchronize"]


def test_monotonic_timer_measures_the_call() -> None:
    import time

    result, busy_ns = MonotonicTimer().measure(lambda s: time.sleep(s) or "done", 0.02)
    assert result == "done"
    assert 20_000_000 <= busy_ns < 200_000_000


def test_cpu_class_gets_a_cpu_slot_even_when_a_gpu_is_visible() -> None:
    device = select_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}, cuda_available=lambda: True)
    assert (device.kind, device.torch_device) == ("cpu", "cpu")


@pytest.mark.parametrize("visible, available", [("", True), ("3", False)])
def test_a_gpu_class_without_its_gpu_refuses_to_start(visible: str, available: bool) -> None:
    with pytest.raises(RuntimeError, match="needs a GPU"):
        select_device("h100", {"CUDA_VISIBLE_DEVICES": visible}, cuda_available=lambda: available)
