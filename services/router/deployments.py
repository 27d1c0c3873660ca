"""Deployments as the registry describes them, cached for a few seconds, and kept for
`stale_s` while the registry cannot be reached (a PoP cut from the hub, NATS down): a
deployment this router has served recently keeps serving; one it has not seen gets
503 + Retry-After from the request, never a guess."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from edgeinfer.shared.bus import Unavailable, request
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.events import Deployment, ResolveDeploymentReply, ResolveDeploymentRequest
from edgeinfer.shared.subjects import Subjects


class DeploymentCache:
    def __init__(self, nc: NATS, subjects: Subjects, clock: Clock, fresh_s: float,
                 stale_s: float) -> None:
        self._nc = nc
        self._subjects = subjects
        self._clock = clock
        self._fresh_s = fresh_s
        self._stale_s = stale_s
        self._entries: dict[tuple[str, str], tuple[float, Deployment | None]] = {}

    async def get(self, tenant_id: str, name: str) -> Deployment | None:
        key = (tenant_id, name)
        now = self._clock.monotonic()
        cached = self._entries.get(key)
        if cached is not None and now - cached[0] < self._fresh_s:
            return cached[1]
        try:
            reply = await request(self._nc, self._subjects.resolve_deployment,
                                  ResolveDeploymentRequest(tenant_id=tenant_id, name=name),
                                  ResolveDeploymentReply, what="the registry")
        except Unavailable:
            if cached is not None and cached[1] is not None and now - cached[0] < self._stale_s:
                return cached[1]
            raise
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[key] = (now, reply.deployment)
        return reply.deployment
