"""The usage outbox: an append-only spool on local disk, drained to JetStream.

A request's usage event is appended (and flushed to the kernel) before its response is
returned, so a killed runner process loses nothing it answered. A publisher drains the
spool to JetStream with the event id as `Nats-Msg-Id` and moves a durable offset past an
event only after JetStream has acknowledged it. After a crash between publish and offset
write, events are published again with the same ids: JetStream's duplicate window, and
beyond it the ledger's unique key, drop the repeats.

Layout: `<spool_dir>/<generation>.jsonl` (events, one JSON line each) and
`<generation>.offset` (bytes acknowledged, 20 zero-padded digits rewritten in place).
Each runner process writes a new generation; at start it drains every older generation it
finds, then deletes it.

A batch's `Nats-Msg-Id` is the hash of its spooled lines (shared.events.batch_id): a
republish sends the same lines, so it gets the same id without decoding any event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from nats.js import JetStreamContext

from shared.aio import raise_if_cancelled
from shared.events import batch_id

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 1024  # spooled events read and published per round (in batch messages)
ROTATE_BYTES = 4 * 1024 * 1024


class OffsetFile:
    """How many bytes of a generation JetStream has acknowledged.

    Rewritten in place by one pwrite(2) of a fixed width, which a killed process either
    made or did not (a temporary file and a rename per drain cost more CPU than publishing
    the drain's events). What a power loss may leave — the old value, or NULs — reads as an
    offset at or before the true one: events are republished, deduplicated downstream,
    never skipped."""

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def read(self) -> int:
        digits = os.pread(self._fd, 64, 0).strip(b"\x00 \n")
        return int(digits) if digits.isdigit() else 0

    def write(self, offset: int) -> None:
        os.pwrite(self._fd, b"%0*d" % (self.WIDTH, offset), 0)

    def close(self) -> None:
        os.close(self._fd)


class Spool:
    """One generation's files. Appends are synchronous (no await between write and flush)."""

    def __init__(self, directory: Path, generation: str) -> None:
        self.events_path = directory / f"{generation}.jsonl"
        # One write(2) per append, no user-space buffer: a line is in the kernel, and
        # survives the process being killed, the moment append returns.
        self._fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self.offsets = OffsetFile(self.events_path.with_suffix(".offset"))

    def append(self, line: bytes) -> None:
        if not line.endswith(b"\n"):
            raise ValueError("a spool line is one event's JSON and its newline")
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write to the usage spool ({written} of {len(line)} bytes)")
        except OSError:
            # Disk full or failing: take back any part of the line, so that the next append
            # does not start in the middle of a torn one, and let the request fail unbooked.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += written

    def close(self) -> None:
        os.close(self._fd)
        self.offsets.close()


def complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The whole lines in `data` and how many bytes they span (a torn last line is left)."""
    end = data.rfind(b"\n") + 1
    return [line for line in data[:end].split(b"\n") if line], end


def _writer_alive(events_path: Path) -> bool:
    """Whether another live process still writes this generation (`<time>-<pid>.jsonl`)."""
    pid = int(events_path.stem.rsplit("-", 1)[-1])
    if pid == os.getpid():
        return False  # ours from before a rotation, or a predecessor that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Outbox:
    def __init__(self, directory: Path, js: JetStreamContext, subject: str,
                 batch_size: int = 64, linger_s: float = 0.2) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._js = js
        self._subject = subject
        self._batch_size = batch_size
        self._linger_s = linger_s
        generation = f"{time.time_ns():020d}-{os.getpid()}"
        self._spool = Spool(directory, generation)
        self._wake = asyncio.Event()
        self.published = 0
        self.pending_events = 0

    def append(self, line: bytes) -> None:
        """Spool one event: its JSON and a newline (`encode(event) + b"\\n"`, UsageLines.line)."""
        self._spool.append(line)
        self.pending_events += 1
        self._wake.set()

    async def run(self) -> None:
        """Drain forever; NATS being down only delays (retries with backoff, same ids)."""
        backoff = 0.2
        while True:
            # Clear before draining: an append during the drain sets it again.
            self._wake.clear()
            try:
                await self.drain_once()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down or slow: keep the events, retry later
                log.warning("usage outbox: publish failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                raise_if_cancelled()
            else:
                # Linger: the events are already safe in the spool, so gathering a few more
                # first costs no durability and saves a publish and an offset write per request.
                await asyncio.sleep(self._linger_s)

    async def drain_once(self) -> None:
        for events_path in sorted(self._dir.glob("*.jsonl")):
            if events_path == self._spool.events_path or not _writer_alive(events_path):
                await self._drain_file(events_path)

    async def _drain_file(self, events_path: Path) -> None:
        if events_path == self._spool.events_path:
            offset, _ = await self._publish_from(events_path, self._spool.offsets, current=True)
            if offset >= ROTATE_BYTES and offset == events_path.stat().st_size:
                self._rotate()
            return
        offsets = OffsetFile(events_path.with_suffix(".offset"))
        try:
            _, torn = await self._publish_from(events_path, offsets, current=False)
        finally:
            offsets.close()
        # An older generation, fully acknowledged. A torn last line there is an event whose
        # write its dead process never finished, so its response was never sent.
        if torn:
            log.warning("usage outbox: dropping a torn, never-answered record in %s",
                        events_path.name)
        events_path.unlink()
        offsets.path.unlink(missing_ok=True)

    async def _publish_from(self, events_path: Path, offsets: OffsetFile,
                            current: bool) -> tuple[int, bool]:
        """Publish the whole lines past the file's offset, moving the offset after each
        acknowledged chunk. Returns (the new offset, whether a torn line follows it)."""
        offset = offsets.read()
        with open(events_path, "rb") as f:
            f.seek(offset)
            data = f.read()
        lines, span = complete_lines(data)
        for start in range(0, len(lines), PUBLISH_CHUNK):
            chunk = lines[start:start + PUBLISH_CHUNK]
            await asyncio.gather(*(
                self._js.publish(self._subject, payload, headers={"Nats-Msg-Id": msg_id},
                                 timeout=5.0)
                for msg_id, payload in self._messages(chunk)))
            offset += sum(map(len, chunk)) + len(chunk)  # each line and its newline
            offsets.write(offset)
            self.published += len(chunk)
            if current:
                self.pending_events -= len(chunk)
        return offset, span != len(data)

    def _messages(self, chunk: list[bytes]) -> list[tuple[str, bytes]]:
        """(Nats-Msg-Id, payload) pairs: batches of up to `batch_size` spooled events."""
        out = []
        for start in range(0, len(chunk), self._batch_size):
            lines = chunk[start:start + self._batch_size]
            msg_id = batch_id(lines)
            head = (b'{"type":"usage.gpu.batch.v1","id":"' + msg_id.encode() +
                    b'","source":"outbox","time":"' +
                    datetime.now(UTC).isoformat().encode() + b'","events":[')
            out.append((msg_id, head + b",".join(lines) + b"]}"))
        return out

    def _rotate(self) -> None:
        old = self._spool
        self._spool = Spool(self._dir, f"{time.time_ns():020d}-{os.getpid()}")
        old.close()
        old.events_path.unlink()
        old.offsets.path.unlink(missing_ok=True)

    async def flush(self, timeout: float) -> bool:
        """Try to publish everything spooled; True when nothing is left pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await self.drain_once()
                if self.pending_events <= 0:
                    return True
            except Exception as exc:
                log.warning("usage outbox: flush attempt failed: %s", exc)
            await asyncio.sleep(0.2)
        return False

    def close(self) -> None:
        self._spool.close()
