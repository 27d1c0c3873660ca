"""A signer the tests trust as a router: its public key is put where the runners look
(shared/hops.py), so that a test can call a runner directly with a valid token."""

from __future__ import annotations

from edgeinfer.shared.bus import connect
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.subjects import Subjects


async def trusted_signer(nats_url: str, namespace: str) -> HopSigner:
    signer = HopSigner()
    nc = await connect(nats_url, name="test-hop-signer")
    try:
        await signer.publish(nc.jetstream(), Subjects(namespace).hop_keys_bucket)
    finally:
        await nc.close()
    return signer


def hop(signer: HopSigner, tenant_id: str, deployment_id: str, request_id: str = "r1",
        ttl_s: float = 30) -> dict[str, str]:
    return signer.headers(tenant_id, deployment_id, request_id, ttl_s)
