"""The device and its timing source: the CUDA path is checked here with injected events
(no GPU on this machine); it has not run on a real GPU yet unless an issue note says so."""

from __future__ import annotations

import pytest

from edgeinfer.services.runner.device import CudaEventTimer, MonotonicTimer, select_device


class FakeEvent:
    """Records the order of calls; the GPU 'took' `ms` between the two records."""

    log: list[str] = []

    def __init__(self, at_ms: float) -> None:
        self.at_ms = at_ms

    def record(self, stream: object = None) -> None:
        FakeEvent.log.append(f"record on {stream}")

    def synchronize(self) -> None:
        FakeEvent.log.append("synchronize")

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.at_ms - self.at_ms


def test_cuda_timer_charges_event_time_not_host_time() -> None:
    clock = iter([10.0, 10.0 + 3.2505])  # the device worked 3.2505 ms
    FakeEvent.log = []
    timer = CudaEventTimer(lambda: FakeEvent(next(clock)), current_stream=lambda: "stream 7")

    def launch(x: int) -> int:
        FakeEvent.log.append("work")
        return x * 2

    result, busy_ns = timer.measure(launch, 21)
    assert result == 42
    assert busy_ns == 3_250_500
    # The end event is recorded after the work and waited for before the time is read.
    # Both on the caller's current stream, looked up once.
    assert FakeEvent.log == ["record on stream 7", "work", "record on stream 7", "synchronize"]


class SteppingEvent:
    """An event whose recorded time is the next tick of a shared clock."""

    clock = 0.0

    def __init__(self) -> None:
        self.at_ms = -1.0

    def record(self, stream: object = None) -> None:
        self.at_ms = SteppingEvent.clock

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: SteppingEvent) -> float:
        return end.at_ms - self.at_ms


def test_cuda_timer_reuses_event_pairs_but_never_shares_one_between_overlapping_calls() -> None:
    made: list[SteppingEvent] = []

    def new_event() -> SteppingEvent:
        made.append(SteppingEvent())
        return made[-1]

    timer = CudaEventTimer(new_event)

    def work(ms: float) -> None:
        SteppingEvent.clock += ms

    assert timer.measure(work, 2.0)[1] == 2_000_000
    assert timer.measure(work, 0.5)[1] == 500_000
    assert len(made) == 2  # the second call reused the first pair

    def outer(ms: float) -> int:
        SteppingEvent.clock += ms
        _, inner_ns = timer.measure(work, 1.0)  # e.g. a batch inline while one runs in a thread
        return inner_ns

    inner_ns, outer_ns = timer.measure(outer, 3.0)
    assert (inner_ns, outer_ns) == (1_000_000, 4_000_000)
    assert len(made) == 4  # the overlapping call got a pair of its own


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
