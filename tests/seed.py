"""Seeding for tests that write usage without the registry's API or a router: deployments
the registry knows (metering dead-letters usage for a deployment that does not exist or is
not the tenant's: services/metering/owners.py), and usage already confirmed as delivered
(only that is billed: services/metering/settlement.py)."""

from __future__ import annotations

import hashlib

import asyncpg

from edgeinfer.services.metering import ledger, settlement
from edgeinfer.shared.events import UsageEvent


async def register_deployment(db: asyncpg.Pool | asyncpg.Connection, deployment_id: str,
                              tenant_id: str, pops: tuple[str, ...] = ("eu-west", "us-east")) -> None:
    """Insert a model, a version and the deployment under these exact ids (idempotent)."""
    suffix = hashlib.sha256(deployment_id.encode()).hexdigest()
    name = "t" + suffix[:20]
    await db.execute(
        "INSERT INTO registry.models (id, tenant_id, name, framework)"
        " VALUES ($1, $2, $3, 'onnx') ON CONFLICT DO NOTHING", "mod_" + suffix[:16], tenant_id, name)
    await db.execute(
        "INSERT INTO registry.model_versions (id, model_id, version, artifact_digest, artifact_bytes)"
        " VALUES ($1, $2, '1', $3, 1) ON CONFLICT DO NOTHING", "ver_" + suffix[:16],
        "mod_" + suffix[:16], "sha256:" + suffix)
    await db.execute(
        "INSERT INTO registry.deployments (id, tenant_id, name, model_version_id, gpu_class,"
        " allowed_pops) VALUES ($1, $2, $3, $4, 'cpu', $5) ON CONFLICT DO NOTHING",
        deployment_id, tenant_id, name, "ver_" + suffix[:16], list(pops))


async def record_delivered(conn: asyncpg.Connection, events: list[UsageEvent]) -> None:
    """Usage straight into the ledger as the consumer writes it, confirmed as delivered as a
    router's confirmation and metering's settlement would (one transaction)."""
    async with conn.transaction():
        await ledger.record(conn, events)
        await settlement.record_deliveries(conn, [e.request_id for e in events])
        settled = await settlement.settle_in(conn, grace_s=86_400)
    assert settled.delivered >= len(events), settled
