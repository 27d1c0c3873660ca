from __future__ import annotations

import pytest

from edgeinfer.shared.tracing import child_traceparent, trace_id_of

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_continued_with_a_new_span() -> None:
    child = child_traceparent(VALID)
    version, trace, parent, flags = child.split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert parent != "00f067aa0ba902b7" and len(parent) == 16
    assert child_traceparent(VALID[:-2] + "00").endswith("-00")  # not sampled stays so
    assert trace_id_of(VALID.upper()) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("bad", [
    None, "", "garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", VALID + "-extra",
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"])
def test_anything_else_starts_a_new_trace(bad: str | None) -> None:
    assert trace_id_of(bad) == ""
    child = child_traceparent(bad)
    assert trace_id_of(child) and child.endswith("-01")
    assert trace_id_of(child) != trace_id_of(child_traceparent(bad))  # fresh each time


def test_a_later_version_may_carry_more_fields() -> None:
    assert trace_id_of("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next")
