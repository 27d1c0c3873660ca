"""The usage consumers: JetStream durable pull consumers → PostgreSQL, exactly once.

`UsageConsumer` records runners' usage in the ledger; `DeliveryConsumer` records routers'
delivery confirmations, which settlement.py matches with it. Both read the `USAGE` stream
(each its own subjects, its own durable) with the same loop, `StreamConsumer`:

Fetches a batch, writes all its good events (and their hourly sums) in ONE transaction,
and acks the batch only after commit. A crash before commit redelivers the batch; a
crash after commit and before ack redelivers it too, and the ledger's unique key drops
the repeats. A message that cannot be decoded or fails validation goes to the
dead-letter stream with the reason in a header, and is acked only once the dead-letter
stream has it: never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api as js_api
from prometheus_client import Counter, Gauge

from edgeinfer.services.metering import ledger, settlement
from edgeinfer.services.metering.config import ConsumerConfig
from edgeinfer.services.metering.owners import DeploymentOwners
from edgeinfer.shared.aio import raise_if_cancelled
from edgeinfer.shared.events import (
    UsageBatch,
    UsageEvent,
    deliveries_decoder,
    encode,
    usage_message_decoder,
)
from edgeinfer.shared.http import unstorable
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter("edgeinfer_metering_dead_letters",
                       "Messages set aside in the dead-letter stream, with their reason.",
                       ["consumer"])
# JetStream's count, carried by each fetched message: what is stored and not yet handed
# to this consumer. Growing: metering falls behind, and billing with it.
PENDING = Gauge("edgeinfer_metering_consumer_pending_messages",
                "Messages in the usage stream not yet delivered to this consumer (its lag).",
                ["consumer"])


def problems(event: UsageEvent) -> str | None:
    """Why an event that decoded is still not fit for the ledger, or None."""
    if event.busy_us < 0 or event.gpu_us < 0:
        return "negative GPU time"
    if not 0 < event.gpu_share <= 1:
        return f"gpu_share {event.gpu_share} outside (0; 1]"
    if event.gpu_us > event.busy_us:
        return "charged more than the measured busy time"
    if event.ended_at < event.started_at:
        return "ended before it started"
    if not event.tenant_id or not event.deployment_id:
        return "no tenant or deployment"
    for name in ("tenant_id", "deployment_id", "request_id", "runner_id", "pop", "region",
                 "gpu_class", "model_version"):
        if why := unstorable(getattr(event, name)):
            return f"{name} contains {why}"
    return None


class StreamConsumer:
    """Fetch batches from one durable consumer and hand each to `handle_batch`, which acks
    them only after its commit (subclasses say which subjects and what to write)."""

    kind = "usage"

    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 config: ConsumerConfig | None = None) -> None:
        self._pool = pool
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._config = config or ConsumerConfig()
        self.dead_lettered = 0

    def _filter_and_durable(self) -> tuple[str, str]:
        raise NotImplementedError

    async def handle_batch(self, msgs: list[Msg]) -> None:
        raise NotImplementedError

    async def _dead_letter(self, msg: Msg, data: bytes, reason: str) -> None:
        await self._js.publish(self._subjects.usage_dead_letter, data, headers={
            "Edgeinfer-Dead-Reason": reason[:500], "Edgeinfer-Original-Subject": msg.subject})
        log.error("%s message dead-lettered: %s", self.kind, reason)
        self.dead_lettered += 1
        DEAD_LETTERS.labels(self.kind).inc()

    async def run(self) -> None:
        """Consume until cancelled. Subscribing can fail for a while (the stream not made
        yet, a NATS cluster electing its leaders): that is logged and tried again with
        backoff — the usage waits in the stream — instead of ending the task in silence."""
        backoff_s = 0.5
        while True:
            try:
                await self._subscribe_and_consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s consumer stopped (%s: %s); subscribing again in %.1f s",
                            self.kind, type(exc).__name__, exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(10.0, backoff_s * 2)

    async def _subscribe_and_consume(self) -> None:
        subject, durable = self._filter_and_durable()
        sub = await self._js.pull_subscribe(
            subject, durable=durable, stream=self._subjects.usage_stream,
            config=js_api.ConsumerConfig(ack_wait=self._config.ack_wait_s,
                                         max_ack_pending=50_000))
        log.info("consuming %s from %s as %s", subject, self._subjects.usage_stream, durable)
        try:
            await self._consume(sub)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _consume(self, sub: Any) -> None:
        # Fetch the next batch while others are being written, and write several at once
        # (one connection each): NATS, this process and PostgreSQL's backends work at the
        # same time. Every batch in hand is unacked until its own commit.
        batches: asyncio.Queue[list[Msg]] = asyncio.Queue(maxsize=1)
        tasks = [asyncio.create_task(self._fetch_into(sub, batches), name=f"{self.kind}-fetch")]
        tasks += [asyncio.create_task(self._write_from(batches), name=f"{self.kind}-writer-{i}")
                  for i in range(self._config.writers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            # Bounded: batches in hand are unacked and will be redelivered anyway.
            await asyncio.wait(tasks, timeout=5)

    async def _write_from(self, batches: asyncio.Queue[list[Msg]]) -> None:
        while True:
            msgs = await batches.get()
            try:
                await self.handle_batch(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Nothing acked: JetStream redelivers the batch after ack_wait.
                log.warning("%s batch of %d not recorded (%s); it will be redelivered",
                            self.kind, len(msgs), exc)
                await asyncio.sleep(0.5)

    async def _fetch_into(self, sub: Any, batches: asyncio.Queue[list[Msg]]) -> None:
        while True:
            try:
                msgs = await sub.fetch(self._config.batch_size, timeout=self._config.fetch_timeout_s)
            except (NatsTimeoutError, TimeoutError):
                raise_if_cancelled()
                PENDING.labels(self.kind).set(0)  # nothing came in a whole fetch: caught up
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS restarting: the client reconnects by itself
                log.warning("%s fetch failed: %s", self.kind, exc)
                await asyncio.sleep(0.5)
                continue
            raise_if_cancelled()  # a cancellation the fetch swallowed (see shared/aio.py)
            if msgs:
                PENDING.labels(self.kind).set(msgs[-1].metadata.num_pending)
            await batches.put(msgs)

class UsageConsumer(StreamConsumer):
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 config: ConsumerConfig | None = None) -> None:
        super().__init__(pool, nc, subjects, config)
        self._owners = DeploymentOwners(pool)
        self.recorded = 0
        self.duplicates = 0

    def _filter_and_durable(self) -> tuple[str, str]:
        return self._subjects.usage_wildcard, self._subjects.metering_consumer

    async def handle_batch(self, msgs: list[Msg]) -> None:
        good: list[tuple[Msg, UsageEvent]] = []
        dead: list[tuple[Msg, bytes, str]] = []
        for msg in msgs:
            try:
                decoded = usage_message_decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                dead.append((msg, msg.data, f"undecodable: {exc}"))
                continue
            for event in decoded.events if isinstance(decoded, UsageBatch) else (decoded,):
                reason = problems(event)
                if reason:
                    dead.append((msg, encode(event), reason))
                else:
                    good.append((msg, event))
        # The database away: raises, nothing is acked, the batch comes again.
        unknown = await self._owners.problems([event for _, event in good])
        dead += [(msg, encode(event), unknown[event.id]) for msg, event in good if event.id in unknown]
        events = [event for _, event in good if event.id not in unknown]
        for msg, data, reason in dead:
            await self._dead_letter(msg, data, reason)
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await ledger.record(conn, events)
        self.recorded += inserted
        self.duplicates += len(events) - inserted
        for msg in msgs:  # each ack only buffers a publish: no task per message
            await msg.ack()


class DeliveryConsumer(StreamConsumer):
    kind = "delivery"

    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 config: ConsumerConfig | None = None) -> None:
        super().__init__(pool, nc, subjects, config)
        self.confirmed = 0

    def _filter_and_durable(self) -> tuple[str, str]:
        return self._subjects.delivered_wildcard, self._subjects.deliveries_consumer

    async def handle_batch(self, msgs: list[Msg]) -> None:
        request_ids: list[str] = []
        for msg in msgs:
            try:
                ids = deliveries_decoder.decode(msg.data).request_ids
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(msg, msg.data, f"undecodable: {exc}")
                continue
            if bad := next((i for i in ids if unstorable(i) or len(i) > 200), None):
                await self._dead_letter(msg, msg.data, f"request id {bad[:80]!r} cannot be stored")
                continue
            request_ids += ids
        async with self._pool.acquire() as conn, conn.transaction():
            await settlement.record_deliveries(conn, request_ids)
        self.confirmed += len(request_ids)
        for msg in msgs:
            await msg.ack()
