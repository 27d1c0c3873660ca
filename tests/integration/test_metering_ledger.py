"""The usage ledger on real NATS JetStream and PostgreSQL: exactly once, poison to dead letters."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from nats.aio.client import Client as NATS

from edgeinfer.services.metering.config import ConsumerConfig
from edgeinfer.services.metering.consumer import UsageConsumer
from edgeinfer.services.metering.service import MeteringService
from edgeinfer.shared.bus import ensure_streams
from edgeinfer.shared.events import UsageEvent, encode, new_id
from edgeinfer.shared.subjects import Subjects
from tests.seed import register_deployment


def usage(tenant: str, gpu_us: int, pop: str = "eu-west", hours_ago: int = 0) -> UsageEvent:
    start = datetime.now(UTC) - timedelta(hours=hours_ago)
    return UsageEvent(
        id=new_id(), source="test", time=start, tenant_id=tenant, request_id=new_id(),
        deployment_id="dep_" + tenant, model_version="1", runner_id="r1", pop=pop, region=pop,
        gpu_class="cpu", gpu_share=Decimal(1), busy_us=gpu_us, gpu_us=gpu_us, started_at=start,
        ended_at=start + timedelta(microseconds=gpu_us))


async def wait_until(predicate, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def ledger(pool: asyncpg.Pool, tenant: str) -> tuple[int, int, int]:
    events = await pool.fetchrow("SELECT count(*) n, coalesce(sum(gpu_us), 0) us"
                                 " FROM metering.usage_events WHERE tenant_id = $1", tenant)
    hourly = await pool.fetchval("SELECT coalesce(sum(gpu_us), 0) FROM metering.usage_hourly"
                                 " WHERE tenant_id = $1", tenant)
    return int(events["n"]), int(events["us"]), int(hourly)


async def test_duplicates_and_a_consumer_restart_never_double_count(
        nc: NATS, pool: asyncpg.Pool, namespace: str) -> None:
    subjects = Subjects(namespace)
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    tenant = "ten_" + namespace
    await register_deployment(pool, "dep_" + tenant, tenant)
    rng = random.Random(1)
    events = [usage(tenant, rng.randint(1, 50_000), rng.choice(["eu-west", "us-east"]),
                    hours_ago=rng.choice([0, 0, 0, 5])) for _ in range(3000)]
    truth = sum(e.gpu_us for e in events)
    # Every 10th event is published twice under a different Nats-Msg-Id, so JetStream's
    # dedup cannot catch it: only the ledger's unique key can.
    publishes = [(e, e.id) for e in events] + [(e, e.id + "-again") for e in events[::10]]
    rng.shuffle(publishes)

    consumer = UsageConsumer(pool, nc, subjects, ConsumerConfig(batch_size=200, ack_wait_s=2.0))
    task = asyncio.create_task(consumer.run())
    for start in range(0, len(publishes), 500):
        await asyncio.gather(*(js.publish(subjects.usage(e.pop), encode(e),
                                          headers={"Nats-Msg-Id": msg_id})
                               for e, msg_id in publishes[start:start + 500]))
        if start == 1000:  # a restart of the consumer while events flow
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            consumer = UsageConsumer(pool, nc, subjects, ConsumerConfig(batch_size=200, ack_wait_s=2.0))
            task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: _has(pool, tenant, len(events)))
        await asyncio.sleep(1.0)  # anything still in flight would now over-count
        assert await ledger(pool, tenant) == (len(events), truth, truth)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _has(pool: asyncpg.Pool, tenant: str, n: int) -> bool:
    return (await ledger(pool, tenant))[0] >= n


async def test_poison_messages_go_to_the_dead_letter_stream_with_a_reason(
        nc: NATS, pool: asyncpg.Pool, namespace: str) -> None:
    subjects = Subjects(namespace)
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    tenant = "ten_" + namespace
    await register_deployment(pool, "dep_" + tenant, tenant)
    good = usage(tenant, 1234)
    negative = msgspec_replace(usage(tenant, 10), gpu_us=-5)
    # A deployment the registry never had, and another tenant's: the ledger's own guard.
    unknown = msgspec_replace(usage(tenant, 11), deployment_id="dep_nowhere")
    await register_deployment(pool, "dep_other_" + tenant, "ten_other_" + namespace)
    not_theirs = msgspec_replace(usage(tenant, 12), deployment_id="dep_other_" + tenant)
    nul = msgspec_replace(usage(tenant, 13), region="eu\x00west")
    for payload in (b"not json", b'{"type":"usage.gpu.v1"}', encode(negative), encode(good),
                    encode(unknown), encode(not_theirs), encode(nul)):
        await js.publish(subjects.usage("eu-west"), payload)
    consumer = UsageConsumer(pool, nc, subjects)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: _has(pool, tenant, 1))
        await wait_until(lambda: _dead_letters(js, subjects, 6))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await ledger(pool, tenant) == (1, 1234, 1234)
    shown = await MeteringService(pool, nc, subjects).dead_letters(10)
    assert len(shown) == 6 and all(m["subject"] == subjects.usage("eu-west") for m in shown)
    sub = await js.pull_subscribe(subjects.usage_dead_letter, stream=subjects.usage_dead_letter_stream)
    msgs = await sub.fetch(6, timeout=5)
    reasons = sorted(m.headers["Edgeinfer-Dead-Reason"] for m in msgs)  # type: ignore[index]
    assert sorted(m["reason"] for m in shown) == reasons
    assert [r for r in reasons if not r.startswith("undecodable: ")] == [
        f"deployment 'dep_other_{tenant}' does not belong to tenant '{tenant}'",
        "negative GPU time", "region contains a NUL character", "unknown deployment 'dep_nowhere'"]


async def _dead_letters(js, subjects: Subjects, n: int) -> bool:
    info = await js.stream_info(subjects.usage_dead_letter_stream)
    return info.state.messages >= n


def msgspec_replace(event: UsageEvent, **changes: object) -> UsageEvent:
    import msgspec

    return msgspec.structs.replace(event, **changes)


async def test_a_consumer_started_before_its_stream_exists_keeps_trying_and_then_consumes(
        nc: NATS, pool: asyncpg.Pool, namespace: str) -> None:
    """Subscribing fails while the stream is not there (a cluster still electing leaders
    looks the same): the consumer must not end in silence, and consumes once it can."""
    subjects = Subjects(namespace)
    tenant = "ten_" + namespace
    await register_deployment(pool, "dep_" + tenant, tenant)
    consumer = UsageConsumer(pool, nc, subjects)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(1.5)  # a few failed subscribes
        assert not task.done(), "the consumer ended instead of trying again"
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        event = usage(tenant, 4321)
        await js.publish(subjects.usage("eu-west"), encode(event), headers={"Nats-Msg-Id": event.id})
        await wait_until(lambda: _has(pool, tenant, 1))
        assert await ledger(pool, tenant) == (1, 4321, 4321)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
