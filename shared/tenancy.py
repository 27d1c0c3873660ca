"""Who is calling: resolve an API key to its tenant through the accounts service, with a short cache.

Every service that faces tenants (router, registry, metering, billing) uses this; none
of them reads the accounts schema, which the api service owns. Revocation takes effect
within the cache's TTL (1 s by default).

Bounded staleness: when the accounts service cannot be reached (NATS down, a PoP cut
from the hub), a key this process has seen active or suspended within `stale_s` keeps
its last answer; a key it has not seen, or not recently, is refused with 503 +
Retry-After — never a guess, never a 500. Once the link is back, the next lookup after
the TTL asks again, so a revocation made during a cut applies within a second of the heal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from edgeinfer.shared.auth import bearer_token, hash_api_key
from edgeinfer.shared.bus import Unavailable, request
from edgeinfer.shared.events import ResolveKeyReply, ResolveKeyRequest, TenantLimits
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.subjects import Subjects


@dataclass(frozen=True)
class Tenant:
    id: str
    limits: TenantLimits = field(default_factory=TenantLimits)


class KeyResolver:
    def __init__(self, nc: NATS, subjects: Subjects, *, ttl_s: float = 1.0,
                 stale_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._subjects = subjects
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ResolveKeyReply]] = {}

    async def resolve(self, key: str) -> ResolveKeyReply:
        return await self.resolve_hash(hash_api_key(key))

    async def resolve_hash(self, key_hash: str) -> ResolveKeyReply:
        """By the key's hash: what a portal session keeps instead of the key itself."""
        now = self._clock()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        try:
            reply = await request(self._nc, self._subjects.resolve_key,
                                  ResolveKeyRequest(key_hash=key_hash), ResolveKeyReply,
                                  what="the accounts service")
        except Unavailable:
            if (cached is not None and cached[1].status != "unknown"
                    and now - cached[0] < self._stale_s):
                return cached[1]
            raise
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key_hash] = (now, reply)
        return reply

    def forget_key_hash(self, key_hash: str) -> None:
        """A revocation event arrived: the next use of this key asks the accounts service."""
        self._cache.pop(key_hash, None)

    def forget_tenant(self, tenant_id: str) -> None:
        """The tenant's status or limits changed: drop every cached key of it."""
        for key_hash in [h for h, (_, r) in self._cache.items() if r.tenant_id == tenant_id]:
            del self._cache[key_hash]

    async def tenant_from_header(self, authorization: str | None) -> Tenant:
        """The tenant of an `Authorization: Bearer` header, or a 401/403 refusal that says why."""
        key = bearer_token(authorization)
        if key is None:
            raise Refusal(401, "missing_api_key",
                          "send your API key as 'Authorization: Bearer <key>'",
                          headers={"WWW-Authenticate": "Bearer"})
        reply = await self.resolve(key)
        if reply.status == "active" and reply.tenant_id is not None:
            return Tenant(reply.tenant_id, reply.limits)
        if reply.status == "suspended":
            raise Refusal(403, "tenant_suspended",
                          "this tenant is suspended; contact support to restore access")
        raise Refusal(401, "invalid_api_key", "the API key is unknown or revoked",
                      headers={"WWW-Authenticate": "Bearer"})


def tenant_provider(resolver: KeyResolver):
    """A Litestar dependency named `tenant` for the routes of any tenant-facing service."""
    from litestar import Request
    from litestar.di import Provide

    async def provide_tenant(request: Request) -> Tenant:  # type: ignore[type-arg]
        return await resolver.tenant_from_header(request.headers.get("authorization"))

    return Provide(provide_tenant)
