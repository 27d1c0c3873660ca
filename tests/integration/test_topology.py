"""The distributed NATS layout on real nats-server processes (loopback ports): configs
generated from one description pass `nats-server -t`; a hub cluster of three with
JetStream and two PoP leaf nodes with domains of their own come up from them; usage
spooled and published at the PoPs reaches the hub's ledger through stream sourcing, and
losing a hub server (SIGKILL) under load loses and doubles nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from edgeinfer.services.metering import settlement
from edgeinfer.services.metering.consumer import DeliveryConsumer, UsageConsumer
from edgeinfer.services.metering.sources import SourceWatch
from edgeinfer.services.router.deliveries import DeliveryConfirmations
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.services.runner.outbox import Outbox
from edgeinfer.shared.bus import connect, ensure_hub_streams, ensure_pop_streams
from edgeinfer.shared.clock import SYSTEM_CLOCK
from edgeinfer.shared.embedded import free_port, nats_server_binary, wait_for_port
from edgeinfer.shared.events import UsageEvent, encode, new_id
from edgeinfer.shared.nats_topology import Topology, parse_topology, render
from edgeinfer.shared.subjects import Subjects
from tests.seed import register_deployment

POPS = ("eu-west", "us-east")


def loopback_topology(namespace: str, auth: bool = False) -> Topology:
    hub = "\n".join(f"""
[[hub]]
name = "hub-{i}"
host = "127.0.0.1"
client_port = {free_port()}
cluster_port = {free_port()}
leaf_port = {free_port()}
""" for i in (1, 2, 3))
    pops = "\n".join(f"""
[[pops]]
name = "{pop}"
region = "{pop}"
jurisdiction = "{pop[:2]}"
host = "127.0.0.1"
client_port = {free_port()}
""" for pop in POPS)
    return parse_topology(f'namespace = "{namespace}"\nauth = {str(auth).lower()}\n{hub}\n{pops}')


@dataclass
class Servers:
    """The generated configs, and a nats-server process per config."""

    configs: dict[str, Path]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, port: int) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.configs[name])], stdout=log,
                stderr=subprocess.STDOUT)
        wait_for_port(port, timeout=15)

    def kill(self, name: str) -> None:
        self.processes[name].kill()
        self.processes[name].wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("auth", [False, True])
def test_every_generated_config_passes_nats_server_check(tmp_path: Path, namespace: str,
                                                        auth: bool) -> None:
    configs = render(loopback_topology(namespace, auth), tmp_path / "conf", tmp_path / "store")
    credentials = configs.pop("credentials", None)
    per_host = {name: configs.pop(name) for name in list(configs) if name.startswith("credentials-")}
    urls = {name: configs.pop(name) for name in list(configs) if name.startswith("nats-urls-")}
    assert sorted(configs) == ["hub-1", "hub-2", "hub-3", "pop-eu-west", "pop-us-east"]
    assert (credentials is not None) == auth
    if credentials is not None:
        # Each host's file holds its own users only; no password is valid on two hosts.
        assert {name: sorted(json.loads(path.read_text())) for name, path in per_host.items()} == {
            "credentials-hub": sorted(["admin", "api", "registry", "metering", "billing",
                                       "autoscaler", "router"]),
            "credentials-pop-eu-west": ["admin-eu-west", "router-eu-west", "runner-eu-west"],
            "credentials-pop-us-east": ["admin-us-east", "router-us-east", "runner-us-east"]}
        passwords = list(json.loads(credentials.read_text()).values())
        assert len(set(passwords)) == len(passwords)
        for path in [credentials, *per_host.values(), *urls.values(), *configs.values()]:
            assert path.stat().st_mode & 0o777 == 0o600, path
        # Each host's roles with their NATS_URL: its own servers, its own users.
        pop_urls = dict(line.split("=", 1) for line in urls["nats-urls-pop-eu-west"].read_text().split())
        assert sorted(pop_urls) == ["admin", "router", "runner"]
        assert pop_urls["runner"].startswith("nats://runner-eu-west:")
        hub_urls = dict(line.split("=", 1) for line in urls["nats-urls-hub"].read_text().split())
        assert hub_urls["metering"].count("nats://metering:") == 3  # the three hub servers
        kept = credentials.read_text()
        render(loopback_topology(namespace, auth), tmp_path / "conf", tmp_path / "store")
        assert credentials.read_text() == kept  # passwords are drawn once
    for name, path in configs.items():
        checked = subprocess.run([nats_server_binary(), "-t", "-c", str(path)],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"


@pytest.fixture
async def topology_servers(tmp_path: Path, namespace: str) -> AsyncIterator[tuple[Topology, Servers]]:
    topology = loopback_topology(namespace)
    (tmp_path / "logs").mkdir()
    servers = Servers(render(topology, tmp_path / "conf", tmp_path / "store"), tmp_path / "logs")
    try:
        for server in topology.hub:
            servers.start(server.name, server.client_port)
        for pop in topology.pops:
            servers.start(f"pop-{pop.pop.name}", pop.client_port)
        yield topology, servers
    finally:
        servers.stop_all()


async def until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


async def jetstream_ready(nc: NATS) -> bool:
    try:
        await nc.jetstream().account_info()
    except Exception:
        return False
    return True


def usage(tenant: str, pop: str, rng: random.Random) -> UsageEvent:
    now = datetime.now(UTC)
    us = rng.randint(1, 50_000)
    return UsageEvent(id=new_id(), source="test", time=now, tenant_id=tenant, request_id=new_id(),
                      deployment_id="dep_" + tenant, model_version="1", runner_id=f"r-{pop}", pop=pop,
                      region=pop, gpu_class="cpu", gpu_share=Decimal(1), busy_us=us, gpu_us=us,
                      started_at=now, ended_at=now)


async def ledger(pool: asyncpg.Pool, tenant: str) -> tuple[int, int]:
    row = await pool.fetchrow("SELECT count(*) AS n, coalesce(sum(gpu_us), 0)::bigint AS us"
                              " FROM metering.usage_events WHERE tenant_id = $1", tenant)
    return int(row["n"]), int(row["us"])


@pytest.mark.timeout(240)
async def test_pop_usage_reaches_the_hub_ledger_exactly_once_through_a_hub_server_loss(
        topology_servers: tuple[Topology, Servers], pool: asyncpg.Pool, namespace: str,
        tmp_path: Path) -> None:
    topology, servers = topology_servers
    subjects = Subjects(namespace)
    tenant = f"ten_{namespace}"
    await register_deployment(pool, "dep_" + tenant, tenant)
    hub = await connect(",".join(topology.hub_urls), "test-hub")
    pop_clients = {p.pop.name: await connect(p.client_url, f"test-{p.pop.name}")
                   for p in topology.pops}
    tasks: list[asyncio.Task[None]] = []
    try:
        await until(lambda: jetstream_ready(hub), 60, "the hub's JetStream never had a leader")
        await ensure_hub_streams(hub.jetstream(), subjects, POPS, replicas=3)
        outboxes = {}
        for pop, nc in pop_clients.items():
            await until(lambda nc=nc: jetstream_ready(nc), 30, f"{pop}'s JetStream never came up")
            await ensure_pop_streams(nc.jetstream(), subjects, pop)
            outboxes[pop] = Outbox(tmp_path / "spool" / pop, nc.jetstream(), subjects.usage(pop))
            tasks.append(asyncio.create_task(outboxes[pop].run()))
        consumer = UsageConsumer(pool, hub, subjects)
        tasks.append(asyncio.create_task(consumer.run()))

        rng = random.Random(7)
        sent: list[UsageEvent] = []

        async def feed(n: int) -> None:
            for i in range(n):
                event = usage(tenant, POPS[i % 2], rng)
                outboxes[event.pop].append(encode(event) + b"\n")
                sent.append(event)
                if i % 100 == 99:
                    await asyncio.sleep(0.05)

        async def ledger_has(n: int) -> bool:
            return (await ledger(pool, tenant))[0] >= n

        await feed(2000)
        await until(lambda: ledger_has(500), 60, "no usage reached the hub's ledger")
        servers.kill("hub-2")  # one of three: the cluster keeps its quorum
        await feed(2000)
        await until(lambda: ledger_has(3500), 90, "usage stopped after losing a hub server")
        servers.start("hub-2", topology.hub[1].client_port)
        await feed(1000)
        await until(lambda: ledger_has(len(sent)), 90, "not every event reached the ledger")
        await asyncio.sleep(2)  # nothing late or doubled arrives after
        assert await ledger(pool, tenant) == (len(sent), sum(e.gpu_us for e in sent))
        for pop, outbox in outboxes.items():
            assert outbox.pending_events == 0, pop
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in (hub, *pop_clients.values()):
            await nc.close()


def test_the_command_line_renders_and_checks_every_config(tmp_path: Path, namespace: str) -> None:
    from edgeinfer.services.launcher.cli import main

    description = tmp_path / "topology.toml"
    description.write_text(f'namespace = "{namespace}"\n' + "\n".join(
        f'[[hub]]\nname = "hub-{i}"\nhost = "10.0.0.{i}"\n' for i in (1, 2, 3))
        + '[[pops]]\nname = "eu-west"\nregion = "eu-west"\njurisdiction = "eu"\nhost = "10.1.0.1"\n')
    assert main(["topology", "render", str(description), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "credentials-hub.json", "credentials-pop-eu-west.json", "credentials.json", "hub-1.conf",
        "hub-2.conf", "hub-3.conf", "nats-urls-hub.env", "nats-urls-pop-eu-west.env",
        "pop-eu-west.conf"]
    # Users by default: the credentials only their owner reads, no server open to all.
    assert (tmp_path / "out" / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert all("authorization {" in (tmp_path / "out" / f"{name}.conf").read_text()
               for name in ("hub-1", "hub-2", "hub-3", "pop-eu-west"))
    assert main(["topology", "render", str(tmp_path / "missing.toml")]) == 2


async def test_with_auth_each_role_logs_in_and_usage_and_its_confirmation_reach_the_hub(
        tmp_path: Path, pool: asyncpg.Pool, namespace: str) -> None:
    """`auth = true`: every server has a user per role; a PoP's runner and router publish
    under their own users, the hub's metering consumes under its own, across the leaf
    connections (which log in as `leaf`); a client without credentials is refused."""
    topology = loopback_topology(namespace, auth=True)
    (tmp_path / "logs").mkdir()
    configs = render(topology, tmp_path / "conf", tmp_path / "store")
    credentials = json.loads(configs.pop("credentials").read_text())
    servers = Servers(configs, tmp_path / "logs")
    subjects = Subjects(namespace)
    tenant = f"ten_{namespace}"
    await register_deployment(pool, "dep_" + tenant, tenant)

    def url(user: str, base: str) -> str:
        return base.replace("nats://", f"nats://{user}:{credentials[user]}@")

    clients: list[NATS] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for server in topology.hub:
            servers.start(server.name, server.client_port)
        for pop in topology.pops:
            servers.start(f"pop-{pop.pop.name}", pop.client_port)
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(topology.hub_urls[0], allow_reconnect=False, connect_timeout=5)
        eu = topology.pop("eu-west")
        hub_admin = await connect(",".join(url("admin", u) for u in topology.hub_urls), "admin")
        pop_admin = await connect(url("admin-eu-west", eu.client_url), "admin-eu")
        runner = await connect(url("runner-eu-west", eu.client_url), "runner")
        router = await connect(url("router-eu-west", eu.client_url), "router")
        metering = await connect(",".join(url("metering", u) for u in topology.hub_urls), "metering")
        clients += [hub_admin, pop_admin, runner, router, metering]
        await until(lambda: jetstream_ready(hub_admin), 60, "the hub's JetStream never had a leader")
        await ensure_hub_streams(hub_admin.jetstream(), subjects, ["eu-west"], replicas=3)
        await until(lambda: jetstream_ready(pop_admin), 30, "the PoP's JetStream never came up")
        # Metering, as its own user, makes each PoP's usage stream in the PoP's domain and
        # re-applies the hub's sources (services/metering/sources.py).
        tasks.append(asyncio.create_task(
            SourceWatch(metering, subjects, [p.pop.name for p in topology.pops], 0.5).run()))

        async def pop_stream_made() -> bool:
            try:
                await pop_admin.jetstream().stream_info(subjects.pop_usage_stream("eu-west"))
            except nats.js.errors.NotFoundError:
                return False
            return True

        await until(pop_stream_made, 30, "metering never made the PoP's usage stream")

        events = [usage(tenant, "eu-west", random.Random(i)) for i in range(20)]
        for event in events:
            await runner.jetstream().publish(subjects.usage("eu-west"), encode(event),
                                             headers={"Nats-Msg-Id": event.id})
        confirmations = DeliveryConfirmations(router.jetstream(), subjects.delivered("eu-west"),
                                              RouterMetrics(), SYSTEM_CLOCK, flush_s=1)
        for event in events:
            await confirmations.delivered(event.request_id)
        await confirmations.flush()
        tasks += [asyncio.create_task(UsageConsumer(pool, metering, subjects).run()),
                  asyncio.create_task(DeliveryConsumer(pool, metering, subjects).run())]

        async def all_delivered() -> bool:
            await settlement.settle(pool, grace_s=3600)
            return await pool.fetchval(
                "SELECT count(*) FROM metering.usage_events WHERE tenant_id = $1"
                " AND outcome = 'delivered'", tenant) == len(events)

        await until(all_delivered, 60, "usage or its confirmation never reached the hub")

        # The leaf connection filters, both ways, whatever the PoP's own users may do: its
        # admin (every right at the PoP) cannot reach the hub's accounts, usage or another
        # PoP's heartbeats; what the PoP's router must hear still comes through.
        heard_at_hub: list[str] = []
        heard_at_pop: list[str] = []

        async def at_hub(msg: Any) -> None:
            heard_at_hub.append(msg.subject)

        async def at_pop(msg: Any) -> None:
            heard_at_pop.append(msg.subject)

        forged = [subjects.tenant_changed, f"{namespace}.accounts.tenant.x",
                  subjects.heartbeat("us-east", "r1"), subjects.usage("us-east")]
        allowed_up = [subjects.heartbeat("eu-west", "r1"), subjects.demand("dep_x")]
        for subject in forged + allowed_up:
            await hub_admin.subscribe(subject, cb=at_hub)
        for subject in (subjects.key_revoked, f"{namespace}.accounts.secret"):
            await pop_admin.subscribe(subject, cb=at_pop)
        # Sent until the allowed ones arrive (interest takes a moment to cross the links),
        # then once more after a pause: a forged one would have had every chance.
        for _ in range(100):
            for subject in forged + allowed_up:
                await pop_admin.publish(subject, b"{}")
            for subject in (subjects.key_revoked, f"{namespace}.accounts.secret"):
                await hub_admin.publish(subject, b"{}")
            await asyncio.sleep(0.1)
            if set(heard_at_hub) >= set(allowed_up) and heard_at_pop:
                break
        await asyncio.sleep(0.5)
        assert set(heard_at_hub) == set(allowed_up)
        assert set(heard_at_pop) == {subjects.key_revoked}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in clients:
            await nc.close()
        servers.stop_all()
