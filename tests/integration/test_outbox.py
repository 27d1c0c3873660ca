"""The runner's usage outbox on real JetStream: a crash between publish and offset write
republishes with the same ids, and JetStream keeps one copy of each."""

from __future__ import annotations

from pathlib import Path

import msgspec

from edgeinfer.services.runner.outbox import OffsetFile, Outbox
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.subjects import Subjects


async def test_republish_after_a_crash_is_deduplicated(nats_url: str, namespace: str,
                                                       tmp_path: Path) -> None:
    nc = await connect(nats_url, "test")
    try:
        subjects = Subjects(namespace)
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        first = Outbox(tmp_path, js, subjects.usage("eu-west"), batch_size=64)
        for i in range(300):
            first.append(msgspec.json.encode({"id": f"{namespace}-{i}", "n": i}) + b"\n")
        assert await first.flush(timeout=10)
        first.close()
        # The process "died" before its offset reached disk, and left a torn last line.
        (old,) = tmp_path.glob("*.jsonl")
        offsets = OffsetFile(old.with_suffix(".offset"))
        assert offsets.read() == old.stat().st_size, "all 300 were acknowledged"
        offsets.write(0)
        offsets.close()
        with open(old, "ab") as f:
            f.write(b'{"id": "torn')

        second = Outbox(tmp_path, js, subjects.usage("eu-west"), batch_size=64)
        await second.drain_once()
        second.close()
        # The second outbox did republish all 300 (the torn line is not an event) ...
        assert second.published == 300
        info = await js.stream_info(subjects.usage_stream)
        # ... in the same 5 batch messages (300 in batches of 64), each with the same id as
        # the first time, so JetStream stored each once: no sixth message, no tenth.
        assert (info.state.messages, info.state.last_seq) == (5, 5)
        assert not old.exists(), "a fully published old generation is removed"
    finally:
        await nc.close()


async def test_events_across_many_generations_are_published_in_order(
        nats_url: str, namespace: str, tmp_path: Path) -> None:
    """A full generation rotates at the next append; the full ones are drained, in order,
    and deleted, and the outbox counts nothing pending once all are acknowledged."""
    nc = await connect(nats_url, "test")
    try:
        subjects = Subjects(namespace)
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        outbox = Outbox(tmp_path, js, subjects.usage("eu-west"), batch_size=10,
                        generation_bytes=1024)
        for i in range(200):  # ~40 bytes each: ~25 a generation, 8 generations
            outbox.append(msgspec.json.encode({"id": f"{namespace}-{i}", "n": i}) + b"\n")
            if i == 120:
                await outbox.drain_once()  # some drained mid-way
        assert len(list(tmp_path.glob("*.jsonl"))) > 3
        assert await outbox.flush(timeout=10)
        assert outbox.published == 200
        assert len(list(tmp_path.glob("*.jsonl"))) == 1, "only the generation being written"
        outbox.close()

        consumer = await js.pull_subscribe(subjects.usage("eu-west"), durable=None,
                                           stream=subjects.usage_stream)
        seen: list[int] = []
        while len(seen) < 200:
            for msg in await consumer.fetch(50, timeout=5):
                seen += [e["n"] for e in msgspec.json.decode(msg.data)["events"]]
        assert seen == list(range(200))
    finally:
        await nc.close()
