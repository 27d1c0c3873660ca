"""What every model family provides to the batcher.

A request is validated into a `Work` before it reaches the device (bad input is never
charged). The batcher then runs a batch in three steps, of which only `forward` is timed
and charged: `collate` (host-side packing, e.g. padding), `forward` (the device work),
`split` (each request's outputs, back on the host).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class InvalidInput(ValueError):
    """The request's input does not fit the model's schema; it never reaches the device."""


@dataclass(frozen=True)
class Work:
    payload: Any
    units: int  # this request's share of a batch's device work: rows, or tokens for text


class ServedModel(Protocol):
    framework: str
    unit: str  # what Work.units counts, named in answers and docs
    max_batch_units: int

    def validate(self, inputs: list[Any]) -> Work: ...

    def warm_input(self) -> Work: ...

    def collate(self, batch: Sequence[Work]) -> Any: ...

    def forward(self, collated: Any) -> Any: ...

    def split(self, output: Any, batch: Sequence[Work]) -> list[dict[str, Any]]: ...


def run_alone(model: ServedModel, work: Work) -> dict[str, Any]:
    """One request without batching or timing: warm-up, and the benchmarks' bare reference."""
    return model.split(model.forward(model.collate([work])), [work])[0]
