"""When the accounts service or the registry cannot be reached over NATS (the service down,
NATS down, a PoP cut from the hub), lookups answer from what was seen within the bounded
staleness, and refuse anything else with 503 + Retry-After: never a 500, never a guess."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from edgeinfer.services.router.deployments import DeploymentCache
from edgeinfer.shared.auth import hash_api_key
from edgeinfer.shared.bus import Unavailable, connect
from edgeinfer.shared.clock import FrozenClock
from edgeinfer.shared.embedded import start_nats
from edgeinfer.shared.events import (
    Deployment,
    ResolveDeploymentReply,
    ResolveKeyReply,
    ResolveKeyRequest,
    encode,
)
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tenancy import KeyResolver

KNOWN = "ei_known"
DEPLOYMENT = Deployment(id="dep_1", tenant_id="ten_1", name="digits", model_name="digits",
                        model_version="1", framework="onnx", artifact_digest="sha256:00",
                        gpu_class="cpu", allowed_pops=["eu-west"], min_replicas=0, max_replicas=1)


async def accounts_responder(nc: NATS, subjects: Subjects,  # type: ignore[no-untyped-def]
                             revoked: bool = False):
    async def on_request(msg) -> None:  # type: ignore[no-untyped-def]
        req = msgspec.json.decode(msg.data, type=ResolveKeyRequest)
        known = req.key_hash == hash_api_key(KNOWN) and not revoked
        await msg.respond(encode(ResolveKeyReply(tenant_id="ten_1" if known else None,
                                                 status="active" if known else "unknown")))

    return await nc.subscribe(subjects.resolve_key, cb=on_request)


async def test_a_key_seen_recently_keeps_working_and_an_unseen_one_is_a_503(
        nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    clock = FrozenClock(datetime.now(UTC), mono=100.0)
    resolver = KeyResolver(nc, subjects, ttl_s=1.0, stale_s=300.0, clock=clock.monotonic)
    accounts = await accounts_responder(nc, subjects)
    assert (await resolver.tenant_from_header(f"Bearer {KNOWN}")).id == "ten_1"
    with pytest.raises(Exception, match="unknown or revoked"):
        await resolver.tenant_from_header("Bearer ei_other")
    await accounts.unsubscribe()  # the accounts service is gone (or this PoP is cut off)
    await nc.flush()

    clock.advance(120)  # past the TTL, within the bounded staleness
    assert (await resolver.tenant_from_header(f"Bearer {KNOWN}")).id == "ten_1"
    for unseen in ("ei_never_seen", "ei_other"):  # unknown, or known only as unknown
        with pytest.raises(Unavailable) as refused:
            await resolver.tenant_from_header(f"Bearer {unseen}")
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "2"
    clock.advance(200)  # 320 s since the last answer: too stale to trust
    with pytest.raises(Unavailable):
        await resolver.tenant_from_header(f"Bearer {KNOWN}")

    await accounts_responder(nc, subjects, revoked=True)  # revoked at the hub during the cut
    # The link is back: the next use asks again at once (the cached answer is stale), so
    # the revocation applies on the first request after the heal.
    with pytest.raises(Exception, match="unknown or revoked"):
        await resolver.tenant_from_header(f"Bearer {KNOWN}")


async def test_a_deployment_seen_recently_keeps_serving_and_an_unseen_one_is_a_503(
        nc: NATS, namespace: str) -> None:
    subjects = Subjects(namespace)
    clock = FrozenClock(datetime.now(UTC), mono=0.0)
    cache = DeploymentCache(nc, subjects, clock, fresh_s=5.0, stale_s=300.0)

    async def on_request(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(encode(ResolveDeploymentReply(deployment=DEPLOYMENT)))

    registry = await nc.subscribe(subjects.resolve_deployment, cb=on_request)
    assert await cache.get("ten_1", "digits") == DEPLOYMENT
    await registry.unsubscribe()
    await nc.flush()
    clock.advance(60)
    assert await cache.get("ten_1", "digits") == DEPLOYMENT
    with pytest.raises(Unavailable, match="the registry cannot be reached"):
        await cache.get("ten_1", "other")
    clock.advance(300)
    with pytest.raises(Unavailable):
        await cache.get("ten_1", "digits")


async def test_nats_itself_down_is_a_503_not_an_error(tmp_path: Path, namespace: str) -> None:
    server = start_nats(tmp_path)
    client = await connect(server.url, "test-nats-down")
    try:
        resolver = KeyResolver(client, Subjects(namespace), ttl_s=0.0)
        server.process.kill()  # SIGKILL: no goodbye to the client
        server.process.wait()
        with pytest.raises(Unavailable) as refused:
            await resolver.tenant_from_header(f"Bearer {KNOWN}")
        assert refused.value.status_code == 503
    finally:
        await client.close()
        server.stop()
