"""The outbox's files: the acknowledged offset survives what a killed or powered-off
process can leave, and only whole lines are ever published."""

from __future__ import annotations

from pathlib import Path

from services.runner.outbox import OffsetFile, complete_lines


def test_an_offset_reads_back_what_was_last_written(tmp_path: Path) -> None:
    offsets = OffsetFile(tmp_path / "g.offset")
    assert offsets.read() == 0, "a new generation starts at its beginning"
    offsets.write(1_234_567)
    offsets.write(1_234_999)
    offsets.close()
    assert OffsetFile(tmp_path / "g.offset").read() == 1_234_999


def test_a_shorter_value_overwrites_a_longer_one_entirely(tmp_path: Path) -> None:
    offsets = OffsetFile(tmp_path / "g.offset")
    offsets.write(98_765_432)
    offsets.write(7)
    assert offsets.read() == 7


def test_an_offset_written_by_the_earlier_text_format_is_read(tmp_path: Path) -> None:
    (tmp_path / "g.offset").write_text("4096")
    offsets = OffsetFile(tmp_path / "g.offset")
    assert offsets.read() == 4096
    offsets.write(8192)
    assert offsets.read() == 8192


def test_what_a_power_loss_may_leave_reads_as_the_start(tmp_path: Path) -> None:
    """NULs (a block allocated, its data never written) or garbage: republishing from the
    start is safe (deduplicated downstream); skipping events would not be."""
    for leftover in (b"\x00" * 20, b"", b"12ab"):
        (tmp_path / "g.offset").write_bytes(leftover)
        assert OffsetFile(tmp_path / "g.offset").read() == 0


def test_only_whole_lines_are_taken() -> None:
    assert complete_lines(b'{"a":1}\n{"b":2}\n{"c"') == ([b'{"a":1}', b'{"b":2}'], 16)
    assert complete_lines(b"") == ([], 0)
