"""Whose deployment is it: the check that keeps usage for unknown tenants out of the ledger.

A usage event's tenant and deployment come from the router's signed token, so a runner
cannot pick them; this is the ledger's own guard behind that, against a bug or a forged
event: the deployment must exist and belong to the event's tenant. It reads the registry's
published view `registry.deployment_owners` (migrations/registry/0005) — a deployment is
never deleted and never changes owner, so each answer is cached for good.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from edgeinfer.shared.events import UsageEvent


class DeploymentOwners:
    def __init__(self, pool: asyncpg.Pool, max_cached: int = 200_000) -> None:
        self._pool = pool
        self._max_cached = max_cached
        self._owner: dict[str, str] = {}

    async def problems(self, events: Sequence[UsageEvent]) -> dict[str, str]:
        """Event id → why its tenant or deployment is not one the registry knows."""
        missing = {e.deployment_id for e in events if e.deployment_id not in self._owner}
        if missing:
            rows = await self._pool.fetch(
                "SELECT deployment_id, tenant_id FROM registry.deployment_owners"
                " WHERE deployment_id = ANY($1::text[])", list(missing))
            if len(self._owner) + len(rows) > self._max_cached:
                self._owner.clear()
            self._owner.update((r["deployment_id"], r["tenant_id"]) for r in rows)
        found: dict[str, str] = {}
        for e in events:
            owner = self._owner.get(e.deployment_id)
            if owner is None:
                found[e.id] = f"unknown deployment {e.deployment_id!r}"
            elif owner != e.tenant_id:
                found[e.id] = (f"deployment {e.deployment_id!r} does not belong to tenant"
                               f" {e.tenant_id!r}")
        return found
