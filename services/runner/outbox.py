"""The usage outbox: an append-only spool on local disk, drained to JetStream.

A request's usage event is appended (handed to the kernel's page cache) before its response
is returned, so a killed runner process loses nothing it answered. A publisher drains the
spool to JetStream with the event id as `Nats-Msg-Id` and moves a durable offset past an
event only after JetStream has acknowledged it. After a crash between publish and offset
write, events are published again with the same ids: JetStream's duplicate window, and
beyond it the ledger's unique key, drop the repeats.

Layout: `<spool_dir>/<generation>.jsonl` (events, one JSON line each, then NULs up to the
generation's preallocated size while it is written) and `<generation>.offset` (bytes
acknowledged, 20 zero-padded digits rewritten in place). A runner process starts a new
generation at start and whenever one is full; it drains every older generation it finds
(its own, and those of dead processes), then deletes it.

A batch's `Nats-Msg-Id` is the hash of its spooled lines (shared.events.batch_id): a
republish sends the same lines, so it gets the same id without decoding any event.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import time
from pathlib import Path

from nats.js import JetStreamContext

from edgeinfer.shared.aio import raise_if_cancelled
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import batch_id

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 1024  # spooled events read and published per round (in batch messages)
GENERATION_BYTES = 4 * 1024 * 1024  # ~8,500 events of ~490 bytes; full: rotated at the next append


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


class SpoolFull(Exception):
    """The generation has no room for the line: start a new one."""


class Spool:
    """One generation's events file, written through a shared memory map.

    Why a map: a write(2) per request cost a CPU-bound runner ~1.3 % of its throughput,
    though the call itself takes ~1 µs (docs/decisions/0009-usage-spool-is-memory-mapped.md).
    A store into a MAP_SHARED mapping is a store into the file's page cache: once `append`
    returns, the line is the kernel's and survives this process being killed, as after a
    write(2). (Neither survives a power loss without fsync, which the spool never did.)

    The file is written full of zeros when created, so every block is allocated and in the
    page cache before the first store: a store can never meet a full disk (which, through a
    map, would be SIGBUS instead of an error), and the first store to a page is a cheap
    fault. After the last line come NULs, which no JSON line contains: the data of a file
    left by a killed process ends at its first NUL; a closed one is cut to its lines.
    """

    def __init__(self, events_path: Path, capacity: int = GENERATION_BYTES) -> None:
        self.events_path = events_path
        self.capacity = capacity
        self.size = 0
        fd = os.open(events_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            zeros = bytes(min(capacity, 1 << 20))
            filled = 0
            while filled < capacity:
                filled += os.write(fd, zeros[:capacity - filled])
            self._map = mmap.mmap(fd, capacity)
        except BaseException:
            os.close(fd)
            events_path.unlink(missing_ok=True)
            raise
        self._fd = fd

    def append(self, line: bytes) -> None:
        if not line.endswith(b"\n"):
            raise ValueError("a spool line is one event's JSON and its newline")
        end = self.size + len(line)
        if end > self.capacity:
            if len(line) > self.capacity:
                raise ValueError(f"a usage event of {len(line)} bytes is larger than a spool "
                                 f"generation ({self.capacity} bytes)")
            raise SpoolFull
        self._map[self.size:end] = line
        self.size = end

    def read(self, start: int) -> bytes:
        """The lines spooled from byte `start` on."""
        return self._map[start:self.size]

    def close(self) -> None:
        self._map.close()
        os.ftruncate(self._fd, self.size)
        os.close(self._fd)


def spooled_data(events_path: Path, start: int) -> bytes:
    """What a generation that is not being written holds from byte `start` on: up to its
    first NUL (a killed writer leaves the preallocated rest of the file as NULs)."""
    with open(events_path, "rb") as f:
        f.seek(start)
        data = f.read()
    end = data.find(b"\x00")
    return data if end < 0 else data[:end]


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
                 batch_size: int = 64, linger_s: float = 0.2,
                 generation_bytes: int = GENERATION_BYTES, clock: Clock = SYSTEM_CLOCK) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._dir = directory
        self._js = js
        self._subject = subject
        self._batch_size = batch_size
        self._linger_s = linger_s
        self._generation_bytes = generation_bytes
        self._own: set[Path] = set()  # generations this outbox wrote, not yet drained
        self._spool = self._new_spool()
        self._wake = asyncio.Event()
        self.published = 0
        self.pending_events = 0  # this outbox's events not yet acknowledged

    def _new_spool(self) -> Spool:
        # Named by wall time (a file name, not a time input): generations sort in the order
        # they were made, across restarts of this process and of the machine.
        spool = Spool(self._dir / f"{time.time_ns():020d}-{os.getpid()}.jsonl",
                      self._generation_bytes)
        self._own.add(spool.events_path)
        return spool

    def append(self, line: bytes) -> None:
        """Spool one event: its JSON and a newline (`encode(event) + b"\\n"`, UsageLines.line)."""
        try:
            self._spool.append(line)
        except SpoolFull:
            full, self._spool = self._spool, self._new_spool()
            full.close()  # drained, then deleted, as an older generation
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
        writing = events_path == self._spool.events_path
        offsets = OffsetFile(events_path.with_suffix(".offset"))
        try:
            offset = offsets.read()
            data = self._spool.read(offset) if writing else spooled_data(events_path, offset)
            torn = await self._publish(data, offset, offsets, events_path in self._own)
        finally:
            offsets.close()
        if writing:
            return
        # An older generation, fully acknowledged. A torn last line there is an event whose
        # write its dead process never finished, so its response was never sent.
        if torn:
            log.warning("usage outbox: dropping a torn, never-answered record in %s",
                        events_path.name)
        events_path.unlink()
        offsets.path.unlink(missing_ok=True)
        self._own.discard(events_path)

    async def _publish(self, data: bytes, offset: int, offsets: OffsetFile, own: bool) -> bool:
        """Publish the whole lines of `data` (what follows `offset`), moving the offset after
        each acknowledged chunk. Returns whether a torn line follows them."""
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
            if own:
                self.pending_events -= len(chunk)
        return span != len(data)

    def _messages(self, chunk: list[bytes]) -> list[tuple[str, bytes]]:
        """(Nats-Msg-Id, payload) pairs: batches of up to `batch_size` spooled events."""
        out = []
        for start in range(0, len(chunk), self._batch_size):
            lines = chunk[start:start + self._batch_size]
            msg_id = batch_id(lines)
            head = (b'{"type":"usage.gpu.batch.v1","id":"' + msg_id.encode() +
                    b'","source":"outbox","time":"' +
                    self._clock.now().isoformat().encode() + b'","events":[')
            out.append((msg_id, head + b",".join(lines) + b"]}"))
        return out

    async def flush(self, timeout: float) -> bool:
        """Try to publish everything spooled; True when nothing is left pending."""
        deadline = self._clock.monotonic() + timeout
        while self._clock.monotonic() < deadline:
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
