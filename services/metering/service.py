"""Metering: usage in, exactly once (docs/architecture.md).

Owns schema `metering`: the usage ledger and its hourly sums, and the one view billing
reads (`metering.billable_usage_hourly`). Consumes the `USAGE` stream; answers the
tenant's usage query; reconciles what runners say they charged with the ledger.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import msgspec
from litestar import Router, get
from litestar.params import Parameter
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import Gauge

from edgeinfer.services.metering import ledger, settlement
from edgeinfer.services.metering.config import MeteringConfig
from edgeinfer.services.metering.consumer import DeliveryConsumer, UsageConsumer
from edgeinfer.services.metering.reconcile import RunnerBalance, reconcile
from edgeinfer.services.metering.sources import SourceWatch
from edgeinfer.shared.bus import decode_or_warn, request
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import (
    ReconciliationReply,
    RunnerBalanceReport,
    encode,
    heartbeat_decoder,
)
from edgeinfer.shared.http import admin_guard
from edgeinfer.shared.money import gpu_seconds
from edgeinfer.shared.periods import month_start, parse_period
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tenancy import KeyResolver, Tenant, tenant_provider

log = logging.getLogger(__name__)

# This month's billable GPU-seconds per tenant, refreshed with each reconciliation: what the
# dashboard shows per tenant (a label per tenant: fine for hundreds, not for millions).
TENANT_GPU_SECONDS = Gauge("edgeinfer_metering_tenant_delivered_gpu_seconds",
                           "GPU-seconds delivered to (billable for) each tenant this month.",
                           ["tenant"])
UNRECONCILED = Gauge("edgeinfer_metering_unreconciled_runners",
                     "Runners whose reported charges and the ledger have differed for longer"
                     " than the grace period (usage lost or counted twice).")


def outcomes(row: asyncpg.Record) -> dict[str, dict[str, int]]:
    """A usage row's GPU time and requests by delivery outcome (pending is the rest)."""
    delivered = {"gpu_us": row["delivered_gpu_us"], "requests": row["delivered_requests"]}
    undelivered = {"gpu_us": row["undelivered_gpu_us"], "requests": row["undelivered_requests"]}
    return {"delivered": delivered, "undelivered": undelivered,
            "pending": {"gpu_us": row["gpu_us"] - delivered["gpu_us"] - undelivered["gpu_us"],
                        "requests": row["requests"] - delivered["requests"]
                        - undelivered["requests"]}}


class MeteringService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 config: MeteringConfig | None = None, clock: Clock = SYSTEM_CLOCK,
                 source_pops: list[str] | None = None) -> None:
        self.config = config or MeteringConfig()
        self._pool = pool
        self._nc = nc
        self._subjects = subjects
        self._clock = clock
        self.consumer = UsageConsumer(pool, nc, subjects, self.config.consumer)
        self.deliveries = DeliveryConsumer(pool, nc, subjects, self.config.consumer)
        self._reported: dict[str, int] = {}
        self._open_since: dict[str, float] = {}
        self.balances: list[RunnerBalance] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.sources = SourceWatch(nc, subjects, source_pops) if source_pops else None

    async def start(self) -> None:
        await self._nc.subscribe(self._subjects.heartbeat_wildcard, cb=self._on_heartbeat)
        await self._nc.subscribe(self._subjects.reconciliation, queue="metering",
                                 cb=self._on_reconciliation)
        self._tasks = [asyncio.create_task(self.consumer.run(), name="usage-consumer"),
                       asyncio.create_task(self.deliveries.run(), name="delivery-consumer"),
                       asyncio.create_task(self._settle_loop(), name="settle"),
                       asyncio.create_task(self._reconcile_loop(), name="reconcile")]
        if self.sources is not None:
            self._tasks.append(asyncio.create_task(self.sources.run(), name="usage-sources"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is not None:
            self._reported[beat.runner_id] = beat.counters.charged_us

    async def reconcile_now(self, now: float) -> list[RunnerBalance]:
        reported = dict(self._reported)
        in_ledger = await ledger.gpu_us_by_runner(self._pool, list(reported))
        self.balances = reconcile(reported, in_ledger,
                                  self._open_since, now, self.config.reconcile_grace_s)
        self._open_since = {b.runner_id: b.open_since for b in self.balances
                            if b.open_since is not None}
        UNRECONCILED.set(sum(b.alert for b in self.balances))
        for b in self.balances:
            if b.alert:
                log.error("runner %s: reported %d µs charged, ledger holds %d µs, for %.0f s",
                          b.runner_id, b.reported_us, b.ledger_us, now - (b.open_since or now))
        return self.balances

    async def _on_reconciliation(self, msg: Msg) -> None:
        balances = await self.reconcile_now(self._clock.monotonic())
        await msg.respond(encode(ReconciliationReply(
            grace_s=self.config.reconcile_grace_s, alerts=sum(b.alert for b in balances),
            runners=[RunnerBalanceReport(runner_id=b.runner_id, reported_us=b.reported_us,
                                         ledger_us=b.ledger_us, difference_us=b.difference_us,
                                         alert=b.alert) for b in balances])))

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            try:
                await self.reconcile_now(self._clock.monotonic())
                this_month = await ledger.delivered_gpu_us_by_tenant(
                    self._pool, month_start(self._clock.now()))
                TENANT_GPU_SECONDS.clear()  # a tenant idle since the month turned shows no more
                for tenant, us in this_month.items():
                    TENANT_GPU_SECONDS.labels(tenant).set(us / 1e6)
            except Exception as exc:  # the database restarting: try again next round
                log.warning("reconciliation failed: %s", exc)

    async def _settle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.settle_interval_s)
            try:
                settled = await settlement.settle(self._pool, self.config.delivery_grace_s)
            except Exception as exc:  # the database restarting: try again next round
                log.warning("settling deliveries failed: %s", exc)
                continue
            if settled.undelivered:
                log.warning("%d usage events marked undelivered (no router confirmed them"
                            " within %.0f s): not billed", settled.undelivered,
                            self.config.delivery_grace_s)

    async def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        js = self._nc.jetstream()
        info = await js.stream_info(self._subjects.usage_dead_letter_stream)
        out: list[dict[str, Any]] = []
        seq = max(info.state.first_seq, info.state.last_seq - limit + 1)
        while info.state.messages and seq <= info.state.last_seq and len(out) < limit:
            try:
                msg = await js.get_msg(self._subjects.usage_dead_letter_stream, seq)
            except NotFoundError:  # deleted by the stream's limits
                seq += 1
                continue
            headers = msg.headers or {}
            out.append({"seq": seq, "time": msg.time.isoformat() if msg.time else None,
                        "reason": headers.get("Edgeinfer-Dead-Reason", ""),
                        "subject": headers.get("Edgeinfer-Original-Subject", ""),
                        "payload": (msg.data or b"")[:2000].decode(errors="replace")})
            seq += 1
        return out

    def admin_router(self, admin_token: str) -> Router:
        service = self

        @get("/reconciliation", operation_id="admin_reconciliation")
        async def reconciliation() -> ReconciliationReply:
            """What each runner says it charged against what the ledger holds, from the
            metering process (it hears the heartbeats); 503 while it restarts."""
            return await request(service._nc, service._subjects.reconciliation, msgspec.Struct(),
                                 ReconciliationReply, timeout=10.0, what="metering")

        @get("/dead-letters", operation_id="admin_dead_letters")
        async def dead_letters(limit: int = 100) -> dict[str, Any]:
            """Usage messages metering refused, with why: never dropped silently."""
            return {"messages": await service.dead_letters(min(max(limit, 1), 1000))}

        return Router("/admin", route_handlers=[reconciliation, dead_letters],
                      guards=[admin_guard(admin_token)],
                      tags=["admin"])

    def router(self, resolver: KeyResolver) -> Router:
        service = self

        @get("/usage", operation_id="get_usage")
        async def usage(tenant: Tenant,
                        from_: str | None = Parameter(query="from", default=None),
                        to: str | None = None) -> dict[str, Any]:
            """GPU-seconds by deployment and PoP over [from, to) (default: this month, UTC),
            with each outcome: `delivered` (billed), `undelivered` (the answer never reached
            the client: not billed) and `pending` (not settled yet)."""
            start, end = parse_period(from_, to, service._clock.now())
            rows = await ledger.usage_by_deployment(service._pool, tenant.id, start, end)
            total_us = sum(r["gpu_us"] for r in rows)
            return {
                "period": {"from": start.isoformat(), "to": end.isoformat()},
                "items": [{"deployment_id": r["deployment_id"], "pop": r["pop"],
                           "region": r["region"], "gpu_class": r["gpu_class"],
                           "gpu_us": r["gpu_us"], "gpu_seconds": str(gpu_seconds(r["gpu_us"])),
                           "requests": r["requests"], "outcomes": outcomes(r)} for r in rows],
                "total_gpu_us": total_us,
                "total_gpu_seconds": str(gpu_seconds(total_us)),
                "total_delivered_gpu_us": sum(r["delivered_gpu_us"] for r in rows),
                "total_undelivered_gpu_us": sum(r["undelivered_gpu_us"] for r in rows),
            }

        return Router("/v1", route_handlers=[usage],
                      dependencies={"tenant": tenant_provider(resolver)}, tags=["metering"])
