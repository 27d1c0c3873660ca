"""The api service: tenants and API keys (schema `accounts`), the admin API, key resolution.

Other services resolve keys over NATS request/reply (`<ns>.accounts.rpc.resolve_key`),
so none of them reads this schema.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import msgspec
from litestar import Router, delete, get, patch, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edgeinfer.services.api import repository
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import (
    KeyRevoked,
    ResolveKeyReply,
    ResolveKeyRequest,
    TenantChanged,
    encode,
    new_id,
)
from edgeinfer.shared.http import Refusal, admin_guard
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)


class NewTenant(msgspec.Struct, frozen=True):
    name: str


class NewKey(msgspec.Struct, frozen=True):
    label: str = ""


class TenantUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: str | None = None
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    max_concurrency: int | None = None


class AccountsService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._clock = clock
        self._nc = nc
        self._subjects = subjects
        self._subscriptions: list[Subscription] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A queue group, so several api processes share the requests.
        self._subscriptions.append(
            await self._nc.subscribe(self._subjects.resolve_key, queue="accounts",
                                     cb=self._on_resolve_key))
        self._sweeper = asyncio.create_task(self._sweep_idempotency_keys(), name="idempotency")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for sub in self._subscriptions:
            await sub.unsubscribe()

    async def _sweep_idempotency_keys(self) -> None:
        """Idempotency keys are kept 24 h (idempotency.py); drop older ones hourly."""
        while True:
            try:
                await repository.forget_old_idempotency_keys(self._pool)
            except Exception as exc:  # the database restarting: next hour
                log.warning("old idempotency keys not swept: %s", exc)
            await asyncio.sleep(3600)

    async def _on_resolve_key(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=ResolveKeyRequest)
        except msgspec.ValidationError:
            await msg.respond(msgspec.json.encode(ResolveKeyReply(tenant_id=None, status="unknown")))
            return
        await msg.respond(encode(await repository.resolve_key_hash(self._pool, req.key_hash)))

    async def _announce(self, subject: str, event: msgspec.Struct) -> None:
        await self._nc.publish(subject, encode(event))

    def admin_router(self, admin_token: str) -> Router:
        pool = self._pool
        subjects = self._subjects
        announce = self._announce

        @post("/tenants", operation_id="admin_create_tenant", status_code=HTTP_201_CREATED)
        async def create_tenant(data: NewTenant) -> dict[str, Any]:
            name = data.name.strip()
            if not 1 <= len(name) <= 200:
                raise Refusal(400, "invalid_name", "tenant name must be 1 to 200 characters")
            tenant = await repository.create_tenant(pool, name)
            return {"id": tenant.id, "name": tenant.name, "status": tenant.status}

        @get("/tenants", operation_id="admin_list_tenants")
        async def list_tenants() -> list[dict[str, Any]]:
            return [{"id": t.id, "name": t.name, "status": t.status,
                     "created_at": t.created_at.isoformat()}
                    for t in await repository.list_tenants_admin(pool)]

        @post("/tenants/{tenant_id:str}/keys", operation_id="admin_issue_key",
              status_code=HTTP_201_CREATED)
        async def issue_key(tenant_id: str, data: NewKey) -> dict[str, Any]:
            if await repository.get_tenant(pool, tenant_id) is None:
                raise Refusal(404, "tenant_not_found", f"no tenant {tenant_id!r}")
            issued = await repository.issue_key(pool, tenant_id, data.label[:200])
            return {"id": issued.id, "tenant_id": tenant_id, "key": issued.key,
                    "prefix": issued.prefix, "label": issued.label,
                    "note": "store this key now: it is shown once and kept only as a hash"}

        @delete("/tenants/{tenant_id:str}/keys/{key_id:str}", operation_id="admin_revoke_key",
                status_code=HTTP_200_OK)
        async def revoke_key(tenant_id: str, key_id: str) -> dict[str, Any]:
            key_hash = await repository.revoke_key_admin(pool, tenant_id, key_id)
            if key_hash is None:
                raise Refusal(404, "key_not_found", f"no live key {key_id!r} for {tenant_id!r}")
            # Routers drop the key from their caches at once (within a second at worst).
            await announce(subjects.key_revoked, KeyRevoked(
                id=new_id(), source="api", time=self._clock.now(), tenant_id=tenant_id,
                key_hash=key_hash))
            return {"id": key_id, "revoked": True}

        @patch("/tenants/{tenant_id:str}", operation_id="admin_update_tenant")
        async def update_tenant(tenant_id: str, data: TenantUpdate) -> dict[str, Any]:
            if data.status not in (None, "active", "suspended"):
                raise Refusal(400, "invalid_status", "status is 'active' or 'suspended'")
            if (data.rate_limit_rps is not None and not 0 < data.rate_limit_rps <= 1e6) or (
                    data.rate_limit_burst is not None and not 1 <= data.rate_limit_burst <= 10**6
            ) or (data.max_concurrency is not None and not 1 <= data.max_concurrency <= 10**5):
                raise Refusal(400, "invalid_limits",
                              "need 0 < rate_limit_rps <= 1e6, 1 <= rate_limit_burst <= 1e6, "
                              "1 <= max_concurrency <= 1e5")
            updated = await repository.update_tenant_admin(
                pool, tenant_id, status=data.status, rate_limit_rps=data.rate_limit_rps,
                rate_limit_burst=data.rate_limit_burst, max_concurrency=data.max_concurrency)
            if updated is None:
                raise Refusal(404, "tenant_not_found", f"no tenant {tenant_id!r}")
            status, new_limits = updated
            await announce(subjects.tenant_changed, TenantChanged(
                id=new_id(), source="api", time=self._clock.now(), tenant_id=tenant_id,
                status=status, limits=new_limits))
            return {"id": tenant_id, "status": status, **msgspec.structs.asdict(new_limits)}

        return Router("/admin", route_handlers=[create_tenant, list_tenants, issue_key, revoke_key,
                                                update_tenant],
                      guards=[admin_guard(admin_token)], tags=["admin"])
