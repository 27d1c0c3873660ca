"""The outbox's files: the acknowledged offset survives what a killed or powered-off
process can leave, only whole lines are ever published, and every line appended before a
kill is there for the next process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeinfer.services.runner.outbox import OffsetFile, Spool, complete_lines, spooled_data


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


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)


def test_every_line_appended_before_a_kill_is_in_the_file(tmp_path: Path) -> None:
    """The spool's guarantee: once append returns, the line outlives the process."""
    run = run_python(f"""
        import os, signal
        from pathlib import Path
        from edgeinfer.services.runner.outbox import Spool
        spool = Spool(Path({str(tmp_path / "g.jsonl")!r}), capacity=64 * 1024)
        for i in range(100):
            spool.append(b'{{"n":%d}}\\n' % i)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert run.returncode == -9, run.stderr
    data = spooled_data(tmp_path / "g.jsonl", 0)
    lines, span = complete_lines(data)
    assert [json.loads(line)["n"] for line in lines] == list(range(100))
    assert span == len(data), "no torn line"
    assert (tmp_path / "g.jsonl").stat().st_size == 64 * 1024, "the NUL tail was never cut"


def test_a_closed_generation_is_cut_to_its_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "g.jsonl", capacity=4096)
    spool.append(b'{"n":1}\n')
    assert spool.read(0) == b'{"n":1}\n'
    spool.close()
    assert (tmp_path / "g.jsonl").read_bytes() == b'{"n":1}\n'


def test_a_torn_line_of_a_killed_writer_ends_at_the_first_nul(tmp_path: Path) -> None:
    (tmp_path / "g.jsonl").write_bytes(b'{"n":1}\n{"n":' + bytes(100))
    data = spooled_data(tmp_path / "g.jsonl", 0)
    assert complete_lines(data) == ([b'{"n":1}'], 8)
    assert len(data) == 13, "the torn line is there, to be reported"


def test_a_full_disk_refuses_a_new_generation_and_the_outbox_recovers(tmp_path: Path) -> None:
    """Blocks are allocated when a generation is made, so a full disk (here RLIMIT_FSIZE)
    is an error there, never a SIGBUS on a store. The outbox keeps the full generation
    current and tries again at the next append."""
    run = run_python(f"""
        import resource, signal
        from pathlib import Path
        from edgeinfer.services.runner.outbox import Outbox
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        outbox = Outbox(Path({str(tmp_path)!r}), None, "usage", generation_bytes=1000)
        line = b'{{"id":"' + b"x" * 390 + b'"}}\\n'  # 400 bytes: two a generation
        outbox.append(line)
        outbox.append(line)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (500, hard))
        try:
            outbox.append(line)
        except OSError as exc:
            print("refused:", exc.strerror)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        outbox.append(line.replace(b"x", b"y"))
        print("pending", outbox.pending_events)
        outbox.close()
    """)
    assert run.returncode == 0, run.stderr
    assert "refused: File too large" in run.stdout
    assert "pending 3" in run.stdout
    files = sorted(tmp_path.glob("*.jsonl"))
    assert [[json.loads(line)["id"][0] for line in f.read_bytes().splitlines()]
            for f in files] == [["x", "x"], ["y"]]


def test_a_spool_line_without_its_newline_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "g.jsonl", capacity=4096)
    with pytest.raises(ValueError, match="newline"):
        spool.append(b'{"id":"a"}')
    with pytest.raises(ValueError, match="larger than a spool generation"):
        spool.append(b"x" * 5000 + b"\n")
    spool.close()
    assert (tmp_path / "g.jsonl").read_bytes() == b""
