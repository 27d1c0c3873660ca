"""Usage ingest, end to end: publish usage events to JetStream and time until every one is
in the ledger, side by side with a raw asyncpg COPY of the same rows (the ceiling).

    .venv/bin/python bench/metering.py [--events 200000] [--rate 10000]

Runs the real metering service (`edgeinfer run metering`) as its own process against
embedded NATS and PostgreSQL, and reports: backlog drain rate (events/s) with a 10%
share of deliberate duplicates, exactly-once check, p50/p99 event-to-ledger latency at a
steady publish rate, and the metering process's peak RSS. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import msgspec
from common import PeakRss

from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.db import migrate
from edgeinfer.shared.embedded import free_port, start_nats, start_postgres
from edgeinfer.shared.events import UsageBatch, UsageEvent, batch_id, encode, new_id
from edgeinfer.shared.subjects import Subjects
from tests.seed import register_deployment

BATCH = int(os.environ.get("BENCH_BATCH", "64"))  # events per message; 1 = one per message


def events(n: int, tenant: str) -> list[UsageEvent]:
    now = datetime.now(UTC)
    return [UsageEvent(
        id=new_id(), source="bench", time=now, tenant_id=tenant, request_id=new_id(),
        deployment_id=f"dep_{tenant}_{i % 20}", model_version="1", runner_id=f"r{i % 50}",
        pop=("eu-west", "us-east")[i % 2], region=("eu-west", "us-east")[i % 2],
        gpu_class="cpu", gpu_share=Decimal(1), busy_us=100 + i % 900, gpu_us=100 + i % 900,
        started_at=now - timedelta(microseconds=500), ended_at=now) for i in range(n)]


async def publish(js, subjects: Subjects, batch: list[UsageEvent], dup_every: int = 0) -> None:
    if BATCH > 1:
        # As the runner's outbox does: up to BATCH events per message.
        for start in range(0, len(batch), BATCH):
            chunk = batch[start:start + BATCH]
            msg = UsageBatch(id=batch_id([encode(e) for e in chunk]), source="bench",
                             time=datetime.now(UTC), events=chunk)
            await js.publish_async(subjects.usage(chunk[0].pop), encode(msg),
                                   headers={"Nats-Msg-Id": msg.id})
            if dup_every:
                # Duplicates JetStream cannot catch (another msg id): only the ledger can.
                dups = chunk[::dup_every]
                again = UsageBatch(id=batch_id([encode(e) for e in dups]) + "-dup", source="bench",
                                   time=datetime.now(UTC), events=dups)
                await js.publish_async(subjects.usage(chunk[0].pop), encode(again),
                                       headers={"Nats-Msg-Id": again.id})
        await js.publish_async_completed()
        return
    for i, e in enumerate(batch):
        await js.publish_async(subjects.usage(e.pop), encode(e), headers={"Nats-Msg-Id": e.id})
        if dup_every and i % dup_every == 0:
            # A duplicate JetStream cannot catch (another msg id): only the ledger can.
            await js.publish_async(subjects.usage(e.pop), encode(e),
                                   headers={"Nats-Msg-Id": e.id + "-dup"})
    await js.publish_async_completed()


async def ledger_count(conn: asyncpg.Connection, tenant: str) -> tuple[int, int]:
    row = await conn.fetchrow("SELECT count(*) n, coalesce(sum(gpu_us), 0) us FROM"
                              " metering.usage_events WHERE tenant_id = $1", tenant)
    return int(row["n"]), int(row["us"])


async def wait_for(conn: asyncpg.Connection, tenant: str, n: int, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while (await ledger_count(conn, tenant))[0] < n:
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"ledger has {(await ledger_count(conn, tenant))[0]} of {n}")
        # Polling a count over a growing table costs PostgreSQL CPU: not too often.
        await asyncio.sleep(0.5)
    return time.perf_counter()


async def main(n: int, rate: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-bench-metering-"))
    work.chmod(0o755)
    nats = start_nats(work)
    pg = start_postgres(work)
    await migrate(pg.url)
    subjects = Subjects("edgeinfer")
    nc = await connect(nats.url, "bench")
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    conn = await asyncpg.connect(pg.url)
    # Metering records usage only for deployments the registry has (metering/owners.py).
    for tenant in ("backlog", "steady"):
        for i in range(20):
            await register_deployment(conn, f"dep_{tenant}_{i}", tenant)
    env = {**os.environ, "NATS_URL": nats.url, "DATABASE_URL": pg.url,
           "EDGEINFER_STATE_DIR": str(work), "EDGEINFER_API_PORT": str(free_port()),
           "EDGEINFER_LOG_LEVEL": "WARNING"}
    metering = None
    try:
        # 1. The ceiling: COPY the same rows into a scratch table.
        rows = events(n, "ceiling")
        await conn.execute("CREATE TABLE scratch (LIKE metering.usage_events INCLUDING DEFAULTS)")
        t0 = time.perf_counter()
        await conn.copy_records_to_table("scratch", records=[(
            e.id, e.tenant_id, e.request_id, e.deployment_id, e.model_version, e.runner_id,
            e.pop, e.region, e.gpu_class, e.gpu_share, e.busy_us, e.gpu_us, e.started_at,
            e.ended_at) for e in rows], columns=[
            "event_id", "tenant_id", "request_id", "deployment_id", "model_version", "runner_id",
            "pop", "region", "gpu_class", "gpu_share", "busy_us", "gpu_us", "started_at",
            "ended_at"])
        copy_rate = n / (time.perf_counter() - t0)

        # 2. A backlog of n events (+10% duplicates) waiting in JetStream, then the consumer.
        backlog = events(n, "backlog")
        t0 = time.perf_counter()
        await publish(js, subjects, backlog, dup_every=10)
        publish_rate = n * 1.1 / (time.perf_counter() - t0)
        metering = subprocess.Popen([str(Path(sys.executable).parent / "edgeinfer"), "run",
                                     "metering"], env=env)
        rss = PeakRss(metering.pid)
        rss.start()
        if os.environ.get("BENCH_PROFILE"):
            subprocess.Popen(["py-spy", "record", "-d", "6", "-r", "200", "-p",
                              str(metering.pid), "-f", "raw", "-o", os.environ["BENCH_PROFILE"]])
        t0 = time.perf_counter()
        t1 = await wait_for(conn, "backlog", n, timeout_s=600)
        drain_rate = n / (t1 - t0)
        await asyncio.sleep(2)  # a double count would show now
        exact = await ledger_count(conn, "backlog") == (n, sum(e.gpu_us for e in backlog))

        # 3. A steady rate: latency from publish to commit.
        steady = events(rate * 10, "steady")
        start = time.perf_counter()
        for second in range(10):
            chunk = steady[second * rate:(second + 1) * rate]
            now = datetime.now(UTC)
            stamped = [msgspec.structs.replace(e, time=now, started_at=now, ended_at=now)
                       for e in chunk]
            await publish(js, subjects, stamped)
            await asyncio.sleep(max(0.0, start + second + 1 - time.perf_counter()))
        await wait_for(conn, "steady", len(steady), timeout_s=120)
        lat = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l) p50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY l) p99 FROM (SELECT extract(epoch"
            " FROM received_at - ended_at) AS l FROM metering.usage_events"
            " WHERE tenant_id = 'steady') x")
        rss.running = False
        print(f"events: {n} (+{n // 10} duplicates under other msg ids), "
              f"{BATCH} per message")
        print(f"raw COPY into a scratch table (ceiling): {copy_rate:9.0f} rows/s")
        print(f"publish (publish_async):                 {publish_rate:9.0f} events/s")
        print(f"metering, backlog drain:                 {drain_rate:9.0f} events/s"
              f"  exactly once: {exact}")
        print(f"steady {rate}/s for 10 s: event→ledger p50 {lat['p50'] * 1000:.0f} ms,"
              f" p99 {lat['p99'] * 1000:.0f} ms (event end → ledger insert)")
        print(f"metering process peak RSS:               {rss.peak / 2**20:9.0f} MB")
    finally:
        if metering is not None:
            metering.terminate()
            metering.wait(30)
        await conn.close()
        await nc.close()
        nats.stop()
        pg.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rate))
