"""Per-role NATS users against a real nats-server (shared/nats_permissions.py): each role
does its own work through the platform's own code — a runner's usage reaches the ledger
through metering's consumers, a router's delivery confirmation settles it, hop keys and
artifacts are read — and each forbidden publish or subscribe is refused by the server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from edgeinfer.services.autoscaler.history import KeepAliveHistory, KeepAliveRecord
from edgeinfer.services.metering import settlement
from edgeinfer.services.metering.consumer import DeliveryConsumer, UsageConsumer
from edgeinfer.services.router.deliveries import DeliveryConfirmations
from edgeinfer.services.router.idempotency import Claim, Idempotency
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.artifacts import get_artifact, put_artifact
from edgeinfer.shared.bus import connect, ensure_streams
from edgeinfer.shared.clock import SYSTEM_CLOCK
from edgeinfer.shared.embedded import free_port, nats_server_binary, wait_for_port
from edgeinfer.shared.events import UsageEvent, encode, new_id
from edgeinfer.shared.hops import HopSigner, kv_fetcher
from edgeinfer.shared.nats_permissions import User, authorization_block, permissions, user_name
from edgeinfer.shared.subjects import Subjects
from tests.integration.test_metering_ledger import wait_until
from tests.seed import register_deployment

POP = "eu-west"
ROLES = [("runner", POP), ("router", POP), ("router", None), ("api", None), ("registry", None),
         ("metering", None), ("billing", None), ("autoscaler", None)]


class Server:
    def __init__(self, port: int, subjects: Subjects) -> None:
        self.port = port
        self.subjects = subjects
        self.errors: dict[str, list[str]] = {}

    async def connect(self, user: str) -> NATS:
        self.errors[user] = []

        async def on_error(exc: Exception) -> None:
            self.errors[user].append(str(exc))

        return await connect(f"nats://{user}:pw-{user}@127.0.0.1:{self.port}", user,
                             error_cb=on_error)

    async def refused(self, user: str, nc: NATS, subject: str, subscribe: bool = False) -> bool:
        """Whether the server refused this publish (or subscription) with a violation."""
        before = len(self.errors[user])
        if subscribe:
            await nc.subscribe(subject)
        else:
            await nc.publish(subject, b"{}")
        await nc.flush()
        for _ in range(50):
            # nats-py lower-cases the server's message.
            if any("permissions violation" in e.lower() and subject.lower() in e.lower()
                   for e in self.errors[user][before:]):
                return True
            await asyncio.sleep(0.02)
        return False


@pytest.fixture
async def server(tmp_path: Path, namespace: str) -> AsyncIterator[Server]:
    subjects = Subjects(namespace)
    users = [User("admin", "pw-admin")] + [
        User(user_name(role, pop), f"pw-{user_name(role, pop)}", permissions(role, subjects, pop))
        for role, pop in ROLES]
    port = free_port()
    config = tmp_path / "nats.conf"
    config.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                      + authorization_block(users))
    check = await asyncio.to_thread(subprocess.run, [nats_server_binary(), "-t", "-c", str(config)],
                                    capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen([nats_server_binary(), "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=15)
        yield Server(port, subjects)
    finally:
        process.terminate()
        process.wait(10)


def usage_event(tenant: str, deployment: str, request_id: str) -> UsageEvent:
    now = datetime.now(UTC)
    return UsageEvent(id=new_id(), source="runner", time=now, tenant_id=tenant,
                      request_id=request_id, deployment_id=deployment, model_version="1",
                      runner_id="r1", pop=POP, region=POP, gpu_class="cpu",
                      gpu_share=Decimal(1), busy_us=777, gpu_us=777, started_at=now, ended_at=now)


async def test_each_role_does_its_work_and_nothing_else(
        server: Server, pool: asyncpg.Pool, namespace: str, tmp_path: Path) -> None:
    s = server.subjects
    admin = await server.connect("admin")
    await ensure_streams(admin.jetstream(), s)
    nc = {name: await server.connect(name) for name in
          [user_name(r, p) for r, p in ROLES]}
    runner, router, api = nc[f"runner-{POP}"], nc[f"router-{POP}"], nc["api"]
    seen: list[str] = []

    async def record(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.subject)

    await router.subscribe(s.heartbeat_wildcard, cb=record)
    await router.subscribe(s.key_revoked, cb=record)
    tasks: list[asyncio.Task[None]] = []
    try:
        # The registry answers the router's lookups (replies to the router's own inbox).
        async def answer(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(b'{"found": false}')

        await nc["registry"].subscribe(s.resolve_deployment, queue="registry", cb=answer)
        await nc["registry"].flush()
        await router.flush()
        reply = await router.request(s.resolve_deployment, b"{}", timeout=5)
        assert reply.data == b'{"found": false}'
        assert reply.subject.startswith(f"_INBOX_router-{POP}.")

        # Hop keys: the router publishes, the runner reads. Artifacts: the api writes
        # (uploads go through it), the runner reads.
        signer = HopSigner()
        await signer.publish(router.jetstream(), s.hop_keys_bucket)
        assert await kv_fetcher(runner.jetstream(), s.hop_keys_bucket)(signer.kid) == signer.public_key
        digest = await put_artifact(api.jetstream(), s.artifact_bucket, b"model bytes" * 1000)
        assert await get_artifact(runner.jetstream(), s.artifact_bucket, digest,
                                  tmp_path / "cache") == b"model bytes" * 1000

        # Usage: the runner publishes its PoP's; the router confirms delivery; metering's two
        # consumers record both and the settlement bills it.
        tenant = "ten_" + namespace
        await register_deployment(pool, "dep_" + tenant, tenant)
        event = usage_event(tenant, "dep_" + tenant, new_id())
        await runner.publish(s.heartbeat(POP, "r1"), b"{}")
        await runner.jetstream().publish(s.usage(POP), encode(event), headers={"Nats-Msg-Id": event.id})
        confirmations = DeliveryConfirmations(router.jetstream(), s.delivered(POP), RouterMetrics(),
                                              SYSTEM_CLOCK, flush_s=1)
        await confirmations.delivered(event.request_id)
        await confirmations.flush()
        tasks += [asyncio.create_task(UsageConsumer(pool, nc["metering"], s).run()),
                  asyncio.create_task(DeliveryConsumer(pool, nc["metering"], s).run())]

        async def settled() -> bool:
            await settlement.settle(pool, grace_s=3600)
            return await pool.fetchval("SELECT outcome FROM metering.usage_events"
                                       " WHERE event_id = $1", event.id) == "delivered"

        await wait_until(settled)

        # The router's Idempotency-Key bucket; the autoscaler's decisions and keep-alive.
        idem = Idempotency(router.jetstream(), s.idempotency_bucket, SYSTEM_CLOCK, 60)
        assert isinstance(await idem.claim(tenant, "k1", "dep", b"{}"), Claim)
        await nc["autoscaler"].jetstream().publish(s.decision("dep_x", POP), b"{}")
        history = KeepAliveHistory(nc["autoscaler"].jetstream(), s.keepalive_bucket)
        await history.open()
        record = KeepAliveRecord(bins={3: 1}, out_of_bounds=0, out_of_bounds_min=0, requests=1,
                                 span_min=5, last_request_wall=0)
        await history.save("dep_x", POP, record)
        assert await history.load() == {("dep_x", POP): record}  # a watch of the whole bucket
        await nc["billing"].publish(s.budget(tenant), b"{}")
        await api.publish(s.key_revoked, b"{}")
        await api.flush()
        await asyncio.sleep(0.3)
        assert s.heartbeat(POP, "r1") in seen and s.key_revoked in seen
        assert not any(server.errors.values()), server.errors  # the allowed work: no refusal

        # Forbidden publishes.
        forbidden = {
            f"runner-{POP}": [s.usage("us-east"), s.heartbeat("us-east", "r1"), s.key_revoked,
                              s.delivered(POP), f"$KV.{s.hop_keys_bucket}.forged",
                              f"$JS.API.STREAM.DELETE.{s.usage_stream}", s.deployment_updated],
            f"router-{POP}": [s.usage(POP), s.key_revoked, s.budget(tenant),
                              f"$JS.API.STREAM.PURGE.{s.usage_stream}"],
            "router": [s.usage(POP)],
            "registry": [s.key_revoked, s.usage(POP)],
            "metering": [s.key_revoked, s.usage(POP), s.budget(tenant)],
            "billing": [s.tenant_changed, s.usage(POP)],
            "autoscaler": [s.key_revoked, s.usage(POP), s.deployment_updated],
            "api": [s.usage(POP), s.heartbeat(POP, "r1")],
        }
        for user, subjects in forbidden.items():
            for subject in subjects:
                assert await server.refused(user, nc[user], subject), (user, subject)
        # Forbidden subscriptions: others' replies, others' traffic.
        for user, subject in [(f"runner-{POP}", s.usage_wildcard), (f"runner-{POP}", "_INBOX.>"),
                              (f"runner-{POP}", s.heartbeat_wildcard),
                              (f"router-{POP}", "_INBOX_api.>"), (f"router-{POP}", s.resolve_key),
                              ("billing", s.usage_wildcard), ("api", "_INBOX.>")]:
            assert await server.refused(user, nc[user], subject, subscribe=True), (user, subject)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in [admin, *nc.values()]:
            await client.close()
