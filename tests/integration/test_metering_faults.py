"""Exactly once under faults, on real processes: a known workload flows from a runner's
outbox through JetStream into the ledger while the metering process is killed with
SIGKILL mid-batch, nats-server is stopped and later SIGKILLed with usage in flight at both
ends, and PostgreSQL is restarted. The ledger
must then equal the ground truth exactly: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from edgeinfer.services.runner.outbox import Outbox
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.db import migrate
from edgeinfer.shared.embedded import EmbeddedNats, free_port, start_nats, start_postgres
from edgeinfer.shared.events import UsageEvent, encode, new_id
from edgeinfer.shared.subjects import Subjects
from tests.seed import register_deployment

N_EVENTS = 20_000
TENANT = "ten_faults"


def workload(rng: random.Random) -> list[UsageEvent]:
    now = datetime.now(UTC)
    return [UsageEvent(
        id=new_id(), source="test", time=now, tenant_id=TENANT, request_id=new_id(),
        deployment_id=f"dep_{i % 7}", model_version="1", runner_id="r1",
        pop=("eu-west", "us-east")[i % 2], region=("eu-west", "us-east")[i % 2],
        gpu_class="cpu", gpu_share=Decimal(1), busy_us=(us := rng.randint(1, 90_000)), gpu_us=us,
        started_at=now - timedelta(hours=i % 3), ended_at=now - timedelta(hours=i % 3))
        for i in range(N_EVENTS)]


def start_metering(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "edgeinfer"), "run", "metering"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


async def ledger(url: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        n, us = await conn.fetchrow("SELECT count(*), coalesce(sum(gpu_us), 0)"
                                    " FROM metering.usage_events WHERE tenant_id = $1", TENANT)
        hourly = await conn.fetchval("SELECT coalesce(sum(gpu_us), 0) FROM metering.usage_hourly"
                                     " WHERE tenant_id = $1", TENANT)
        return int(n), int(us), int(hourly)
    except (OSError, asyncpg.PostgresError):
        return -1, -1, -1
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_ledger_is_exact_after_kill_9_and_nats_and_postgres_restarts(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    nats_port = free_port()
    nats: EmbeddedNats = start_nats(tmp_path, port=nats_port)
    pg = start_postgres(tmp_path)
    await migrate(pg.url)
    conn = await asyncpg.connect(pg.url)
    for i in range(7):
        await register_deployment(conn, f"dep_{i}", TENANT)
    await conn.close()
    subjects = Subjects("faults")
    env = {**os.environ, "NATS_URL": nats.url, "DATABASE_URL": pg.url,
           "EDGEINFER_NAMESPACE": "faults", "EDGEINFER_STATE_DIR": str(tmp_path / "state"),
           "EDGEINFER_API_PORT": str(free_port()), "EDGEINFER_USAGE_ACK_WAIT_S": "3",
           "EDGEINFER_USAGE_BATCH": "500"}
    log = tmp_path / "metering.log"
    rng = random.Random(5)
    events = workload(rng)
    truth = sum(e.gpu_us for e in events)

    nc = await connect(nats.url, "runner")
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    outbox = Outbox(tmp_path / "spool", js, subjects.usage("eu-west"))
    publisher = asyncio.create_task(outbox.run())
    metering = start_metering(env, log)

    def feed(chunk: list[UsageEvent]) -> None:
        for e in chunk:
            outbox.append(encode(e) + b"\n")

    async def ledger_count() -> int:
        return (await ledger(pg.url))[0]

    async def until(predicate, timeout_s: float = 120) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await predicate():
            assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)

    async def ack_pending() -> int:
        info = await js.consumer_info(subjects.usage_stream, subjects.metering_consumer)
        return int(info.num_ack_pending)

    async def trickle(chunk: list[UsageEvent]) -> None:
        """Feed a chunk over ~2 s, so the consumer always has a batch on its hands."""
        for i in range(0, len(chunk), 50):
            feed(chunk[i:i + 50])
            await asyncio.sleep(0.025)

    async def in_flight(check_outbox: bool = False) -> None:
        """Until a batch is delivered to metering and not yet acked (and, if asked, the
        outbox holds events JetStream has not acknowledged): polled without pause."""
        deadline = asyncio.get_running_loop().time() + 30
        while not (await ack_pending() > 0 and (not check_outbox or outbox.pending_events > 0)):
            assert asyncio.get_running_loop().time() < deadline, "never caught a batch in flight"
            await asyncio.sleep(0.001)

    try:
        fifth = N_EVENTS // 5
        # 1. SIGKILL the metering process while batches are in flight: delivered to it and
        #    not yet acknowledged (checked before and after the kill: nobody acks them now).
        feeding = asyncio.create_task(trickle(events[:fifth]))
        await until(lambda: _more_than(ledger_count, 1000))
        await in_flight()
        metering.send_signal(signal.SIGKILL)
        metering.wait()
        assert await ack_pending() > 0, "no batch was in flight at the kill"
        await feeding
        feed(events[fifth:2 * fifth])
        metering = start_metering(env, log)

        # 2. Stop nats-server gracefully while the runner publishes: the outbox holds, retries.
        await until(lambda: _more_than(ledger_count, fifth + 500))
        nats.stop()
        feed(events[2 * fifth:3 * fifth])
        await asyncio.sleep(2)
        nats = start_nats(tmp_path, port=nats_port)

        # 3. SIGKILL nats-server with usage on its way at both ends: spooled in the runner's
        #    outbox and not yet acknowledged by JetStream, and delivered to metering and not
        #    yet acknowledged by it.
        await until(lambda: _more_than(ledger_count, 2 * fifth + 500))
        feeding = asyncio.create_task(trickle(events[3 * fifth:4 * fifth]))
        await in_flight(check_outbox=True)
        nats.process.kill()
        nats.process.wait()
        await feeding
        await asyncio.sleep(2)
        nats = start_nats(tmp_path, port=nats_port)

        # 4. Restart PostgreSQL while the consumer writes.
        await until(lambda: _more_than(ledger_count, 3 * fifth + 500))
        pg.stop()
        feed(events[4 * fifth:])
        # Deliberate duplicates that JetStream cannot catch (other msg ids): the ledger must.
        for e in events[::20]:
            await _publish_eventually(js, subjects.usage(e.pop), encode(e), e.id + "-dup")
        await asyncio.sleep(2)
        pg = start_postgres(tmp_path)

        await until(lambda: _at_least(ledger_count, N_EVENTS), timeout_s=240)
        await asyncio.sleep(4)  # > ack wait: a redelivery that double-counted would show now
        assert await ledger(pg.url) == (N_EVENTS, truth, truth)
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        outbox.close()
        metering.terminate()
        metering.wait(30)
        await nc.close()
        nats.stop()
        pg.stop()


async def _more_than(count, n: int) -> bool:
    return await count() > n


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _publish_eventually(js, subject: str, payload: bytes, msg_id: str) -> None:
    for _ in range(100):
        try:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=2)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise AssertionError("could not publish a duplicate")
