"""The outbox's files: the acknowledged offset survives what a killed or powered-off
process can leave, only whole lines are ever published, and a failed append leaves none
half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.runner.outbox import OffsetFile, Spool, complete_lines


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


def test_a_line_the_disk_cannot_take_is_taken_back_whole(tmp_path: Path) -> None:
    """A write cut short (here by RLIMIT_FSIZE, as by a full disk) raises, and leaves no
    torn line for the next append to be glued to."""
    script = textwrap.dedent(f"""
        import resource, signal
        from pathlib import Path
        from services.runner.outbox import Spool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        line = b'{{"id":"' + b"x" * 90 + b'"}}\\n'  # 100 bytes
        spool = Spool(Path({str(tmp_path)!r}), "g")
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (250, hard))
        spool.append(line)
        spool.append(line)
        try:
            spool.append(line)  # 50 of its 100 bytes fit
        except OSError as exc:
            print("refused:", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        spool.append(line.replace(b"x", b"y"))
        spool.close()
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=60)
    assert run.returncode == 0, run.stderr
    assert "refused: short write" in run.stdout
    lines = (tmp_path / "g.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["id"][0] for line in lines] == ["x", "x", "y"]


def test_a_spool_line_without_its_newline_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "g")
    with pytest.raises(ValueError, match="newline"):
        spool.append(b'{"id":"a"}')
    spool.close()
    assert (tmp_path / "g.jsonl").read_bytes() == b""
