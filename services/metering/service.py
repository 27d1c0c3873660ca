"""Metering and billing (merged: docs/decisions/0001-billing-inside-metering.md).

Owns schema `metering`: the usage ledger, hourly aggregates and the price book. Consumes
the `USAGE` stream; serves the tenant's usage and invoice preview.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from litestar import Router, get
from litestar.params import Parameter
from nats.aio.client import Client as NATS

from services.metering import ledger
from services.metering.consumer import ConsumerConfig, UsageConsumer, consumer_config_from_env
from services.metering.rating import Price, UsageRow, rate
from shared.http import Refusal
from shared.money import gpu_seconds
from shared.subjects import Subjects
from shared.tenancy import KeyResolver, Tenant, tenant_provider


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def parse_period(from_: str | None, to: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) from ISO-8601 query values; defaults to the current calendar month (UTC)."""
    def parse(name: str, value: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Refusal(400, "invalid_period", f"{name}={value!r} is not an ISO-8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    start = parse("from", from_) if from_ else month_start(now)
    end = parse("to", to) if to else next_month(month_start(now))
    if end <= start:
        raise Refusal(400, "invalid_period", "'to' must be after 'from'")
    if end - start > timedelta(days=400):
        raise Refusal(400, "invalid_period", "a period is at most 400 days")
    return start, end


class MeteringService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 consumer_config: ConsumerConfig | None = None) -> None:
        self._pool = pool
        self.consumer = UsageConsumer(pool, nc, subjects,
                                      consumer_config or consumer_config_from_env())
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.consumer.run(), name="usage-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def invoice_preview(self, tenant_id: str, start: datetime, end: datetime) -> dict[str, Any]:
        rows = [UsageRow(r["deployment_id"], r["pop"], r["region"], r["gpu_class"], r["hour"],
                         r["gpu_us"], r["requests"])
                for r in await ledger.hourly_usage(self._pool, tenant_id, start, end)]
        prices = [Price(r["gpu_class"], r["region"], r["currency"], r["unit_price"],
                        r["effective_from"]) for r in await ledger.price_book(self._pool)]
        rated = rate(rows, prices)
        return {
            "period": {"from": start.isoformat(), "to": end.isoformat()},
            "status": "preview",
            "lines": [{"deployment_id": line.deployment_id, "gpu_class": line.gpu_class,
                       "region": line.region, "gpu_seconds": str(line.gpu_seconds),
                       "requests": line.requests, "unit_price": str(line.unit_price),
                       "currency": line.currency, "amount": str(line.amount)}
                      for line in rated.lines],
            "unpriced": [{"deployment_id": r.deployment_id, "gpu_class": r.gpu_class,
                          "region": r.region, "hour": r.hour.isoformat(),
                          "gpu_seconds": str(gpu_seconds(r.gpu_us))} for r in rated.unpriced],
            "totals": {currency: str(amount) for currency, amount in rated.totals().items()},
            "rounding": "each line rounded once to the cent, half-even",
        }

    def router(self, resolver: KeyResolver) -> Router:
        service = self
        pool = self._pool

        @get("/usage", operation_id="get_usage")
        async def usage(tenant: Tenant,
                        from_: str | None = Parameter(query="from", default=None),
                        to: str | None = None) -> dict[str, Any]:
            start, end = parse_period(from_, to, datetime.now(UTC))
            rows = await ledger.usage_by_deployment(pool, tenant.id, start, end)
            total_us = sum(r["gpu_us"] for r in rows)
            return {
                "period": {"from": start.isoformat(), "to": end.isoformat()},
                "items": [{"deployment_id": r["deployment_id"], "pop": r["pop"],
                           "region": r["region"], "gpu_class": r["gpu_class"],
                           "gpu_us": r["gpu_us"], "gpu_seconds": str(gpu_seconds(r["gpu_us"])),
                           "requests": r["requests"]} for r in rows],
                "total_gpu_us": total_us,
                "total_gpu_seconds": str(gpu_seconds(total_us)),
            }

        @get("/invoices/preview", operation_id="preview_invoice")
        async def preview(tenant: Tenant,
                          from_: str | None = Parameter(query="from", default=None),
                          to: str | None = None) -> dict[str, Any]:
            start, end = parse_period(from_, to, datetime.now(UTC))
            return await service.invoice_preview(tenant.id, start, end)

        return Router("/v1", route_handlers=[usage, preview],
                      dependencies={"tenant": tenant_provider(resolver)}, tags=["metering"])
