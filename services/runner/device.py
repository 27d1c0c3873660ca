"""The device a runner owns and how its busy time is measured.

A request is charged for the device-busy time of its model call. On a CPU slot that is the
monotonic time around the call (the call is synchronous). On a GPU, host time around a
launch measures the launch, not the work: CUDA events recorded on the stream before and
after the forward pass, then synchronised, give the time the device spent on it.

The timing source is injected so that the CUDA path is tested here without a GPU: a test
hands `CudaEventTimer` fake events with known elapsed times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class DeviceTimer(Protocol):
    def measure(self, fn: Callable[[T], R], arg: T) -> tuple[R, int]:
        """(what fn(arg) returned, the device-busy nanoseconds it took)."""
        ...


class MonotonicTimer:
    """A CPU slot: the call is synchronous, so wall time around it is its busy time."""

    def measure(self, fn: Callable[[T], R], arg: T) -> tuple[R, int]:
        t0 = time.perf_counter_ns()
        result = fn(arg)
        return result, time.perf_counter_ns() - t0


class CudaEvent(Protocol):
    """The part of `torch.cuda.Event(enable_timing=True)` the timer uses."""

    def record(self, stream: Any = None) -> None: ...

    def synchronize(self) -> None: ...

    def elapsed_time(self, end: CudaEvent) -> float: ...  # milliseconds


class CudaEventTimer:
    """Events before and after the work on the current stream; the end event is waited for,
    so the result (and the time) is complete when `measure` returns.

    Host time is the cost here (bench/gpu_check.py times it on a GPU): event pairs are
    reused rather than created per batch, and the calling thread's current stream is looked
    up once per call rather than by each `record()`. A pair is taken from a free list for
    the length of one call, so overlapping calls never share one."""

    def __init__(self, new_event: Callable[[], CudaEvent],
                 current_stream: Callable[[], Any] = lambda: None) -> None:
        self._new_event = new_event
        self._current_stream = current_stream
        self._free: list[tuple[CudaEvent, CudaEvent]] = []

    def measure(self, fn: Callable[[T], R], arg: T) -> tuple[R, int]:
        # list.pop and list.append are atomic: a batch in a worker thread and one inline
        # can each take a pair.
        start, end = self._free.pop() if self._free else (self._new_event(), self._new_event())
        stream = self._current_stream()
        start.record(stream)
        result = fn(arg)
        end.record(stream)
        end.synchronize()
        busy_ns = round(start.elapsed_time(end) * 1_000_000)
        self._free.append((start, end))
        return result, busy_ns


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" or "cuda"
    name: str  # what the heartbeat reports, e.g. "cpu" or "cuda:0 NVIDIA H100 80GB HBM3 (GPU 3)"
    torch_device: str  # where tensors go: "cpu" or "cuda:0"


def select_device(gpu_class: str, env: Mapping[str, str] | None = None,
                  cuda_available: Callable[[], bool] | None = None) -> Device:
    """The GPU the executor gave this process (CUDA_VISIBLE_DEVICES names exactly one), or a
    CPU slot for the `cpu` class. A GPU class without a visible GPU is a placement error:
    the runner refuses to start rather than bill CPU time as GPU time."""
    env = os.environ if env is None else env
    if gpu_class == "cpu":
        return Device("cpu", "cpu", "cpu")
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if cuda_available is None:
        cuda_available = _torch_cuda_available
    if not visible or not cuda_available():
        raise RuntimeError(f"GPU class {gpu_class!r} needs a GPU, and none is visible "
                           f"(CUDA_VISIBLE_DEVICES={visible!r}); the executor assigns one")
    import torch

    return Device("cuda", f"cuda:0 {torch.cuda.get_device_name(0)} (GPU {visible})", "cuda:0")


def timer_for(device: Device) -> DeviceTimer:
    if device.kind == "cuda":
        import torch

        return CudaEventTimer(lambda: torch.cuda.Event(enable_timing=True),
                              torch.cuda.current_stream)
    return MonotonicTimer()


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
