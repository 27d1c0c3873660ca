"""A PoP cut from the hub, on hosts made of network namespaces (tests/netns.py): the hub's
three NATS servers in one host, each PoP's leaf node in its own, every config generated
from one topology description. Usage keeps being spooled and published at both PoPs at a
steady rate while one PoP's link is down for 60 s, and then while the other PoP's own
NATS is SIGKILLed for 10 s; in the end the hub's ledger holds every event once — none
lost, none doubled — and the other PoP's usage never stopped during the cut.

Prints the figures the issue asks for: usage delay from the heal to the ledger (p50, p99)
and the bytes a PoP sends to the hub per 1,000 events (its link's tx counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from edgeinfer.services.metering.consumer import UsageConsumer
from edgeinfer.services.metering.sources import SourceWatch
from edgeinfer.shared.bus import connect, ensure_hub_streams
from edgeinfer.shared.embedded import nats_server_binary, wait_for_port
from edgeinfer.shared.nats_topology import parse_topology, render
from edgeinfer.shared.subjects import Subjects
from tests.conftest import jetstream_ready
from tests.integration.conftest import POPS
from tests.netns import Hosts
from tests.seed import register_deployment

ROOT = Path(__file__).resolve().parents[2]
CUT_S = 60
NATS_DOWN_S = 10


def sent(path: Path) -> dict[str, tuple[int, float]]:
    """Event id → (gpu_us, time) of what a publisher spooled (whole lines only)."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = (int(parts[1]), float(parts[2]))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.timeout(420)
async def test_a_pop_cut_for_a_minute_delays_usage_and_loses_none(
        hosts: Hosts, pool: asyncpg.Pool, namespace: str, tmp_path: Path) -> None:
    hub_host = hosts.hub_address
    # Without users: this test is about usage through a cut; test_pop_serving_cut runs the
    # same layout with a user per role.
    topology = parse_topology(f'namespace = "{namespace}"\nauth = false\n' + "\n".join(
        f'[[hub]]\nname = "hub-{i}"\nhost = "{hub_host}"\nclient_port = {4221 + i}\n'
        f'cluster_port = {6221 + i}\nleaf_port = {7421 + i}\n' for i in (1, 2, 3)) + "\n".join(
        f'[[pops]]\nname = "{pop}"\nregion = "{pop}"\njurisdiction = "{pop[:2]}"\n'
        f'host = "{hosts.pops[pop]}"\n' for pop in POPS))
    configs = render(topology, tmp_path / "conf", tmp_path / "store")
    processes: list[subprocess.Popen[bytes]] = []
    pop_servers: dict[str, subprocess.Popen[bytes]] = {}
    publishers: list[subprocess.Popen[bytes]] = []

    def start(ns: str, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            process = subprocess.Popen([*hosts.exec_prefix(ns), *cmd], cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    subjects = Subjects(namespace)
    tenant = f"ten_{namespace}"
    await register_deployment(pool, "dep_" + tenant, tenant)
    stop = tmp_path / "stop"
    tasks: list[asyncio.Task[None]] = []
    hub = None
    try:
        for server in topology.hub:
            start(hosts.hub_ns, [nats_server_binary(), "-c", str(configs[server.name])],
                  f"{server.name}.log")
        def start_pop_server(name: str) -> None:
            pop_servers[name] = start(hosts.ns(name), [nats_server_binary(), "-c",
                                                       str(configs[f"pop-{name}"])], f"pop-{name}.log")

        for pop in topology.pops:
            start_pop_server(pop.pop.name)
        for server in topology.hub:
            wait_for_port(server.client_port, timeout=20, host=hub_host)
        await jetstream_ready(",".join(topology.hub_urls))
        hub = await connect(",".join(topology.hub_urls), "test-hub")
        await ensure_hub_streams(hub.jetstream(), subjects, POPS, replicas=3)
        consumer = UsageConsumer(pool, hub, subjects)
        tasks.append(asyncio.create_task(consumer.run()))
        watch = SourceWatch(hub, subjects, POPS)
        tasks.append(asyncio.create_task(watch.run()))

        for pop in topology.pops:
            name = pop.pop.name
            wait_for_port(pop.client_port, timeout=20, host=pop.host)
            publishers.append(start(hosts.ns(name), [sys.executable, "-m", "tests.tools.pop_publisher",
                                   "--nats", pop.client_url, "--namespace", namespace,
                                   "--pop", name, "--tenant", tenant,
                                   "--spool", str(tmp_path / "spool" / name),
                                   "--out", str(tmp_path / f"sent-{name}.txt"),
                                   "--stop", str(stop), "--rate", "100"], f"pub-{name}.log"))

        async def ledger_ids(pop: str | None = None) -> dict[str, int]:
            rows = await pool.fetch(
                "SELECT event_id, gpu_us FROM metering.usage_events WHERE tenant_id = $1"
                " AND ($2::text IS NULL OR pop = $2)", tenant, pop)
            return {r["event_id"]: r["gpu_us"] for r in rows}

        async def until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
            deadline = asyncio.get_running_loop().time() + timeout_s
            while not await check():
                assert asyncio.get_running_loop().time() < deadline, what
                await asyncio.sleep(0.25)

        async def both_flowing() -> bool:
            counts = [len(await ledger_ids(p)) for p in POPS]
            return min(counts) > 100

        await until(both_flowing, 90, "usage from both PoPs never reached the hub's ledger")

        # Steady state: what one PoP's usage costs on its link to the hub.
        eu_sent = tmp_path / "sent-eu-west.txt"
        bytes_before, events_before = hosts.tx_bytes("eu-west"), len(sent(eu_sent))
        await asyncio.sleep(10)
        wan_per_1000 = ((hosts.tx_bytes("eu-west") - bytes_before)
                        / max(1, len(sent(eu_sent)) - events_before) * 1000)

        hosts.cut("eu-west")
        cut_at = datetime.now(UTC).timestamp()
        us_during = len(await ledger_ids("us-east"))
        await asyncio.sleep(CUT_S)
        us_after = len(await ledger_ids("us-east"))
        hosts.heal("eu-west")
        healed_at = datetime.now(UTC).timestamp()

        # Then the other PoP loses its own NATS (the leaf node SIGKILLed): its runner side
        # keeps spooling to disk, and publishes everything once the server is back.
        await asyncio.sleep(3)
        pop_servers["us-east"].kill()
        pop_servers["us-east"].wait()
        nats_killed_at = datetime.now(UTC).timestamp()
        await asyncio.sleep(NATS_DOWN_S)
        start_pop_server("us-east")
        nats_back_at = datetime.now(UTC).timestamp()
        await asyncio.sleep(3)
        stop.touch()
        for process, name in zip(publishers, POPS, strict=True):  # drained, then gone
            assert await asyncio.to_thread(process.wait, 90) == 0, \
                (tmp_path / f"pub-{name}.log").read_text()

        truth = {**sent(eu_sent), **sent(tmp_path / "sent-us-east.txt")}

        async def complete() -> bool:
            return len(await ledger_ids()) >= len(truth)

        await until(complete, 120, "usage spooled at the cut PoP never reached the ledger")
        await asyncio.sleep(2)  # and nothing late or doubled follows
        assert await ledger_ids() == {event_id: us for event_id, (us, _) in truth.items()}
        assert us_after - us_during > 0.5 * 100 * CUT_S, "the other PoP's usage stopped too"

        during_cut = [event_id for event_id, (_, at) in sent(eu_sent).items()
                      if cut_at <= at < healed_at]
        received = await pool.fetch("SELECT event_id, received_at FROM metering.usage_events"
                                    " WHERE event_id = ANY($1::text[])", during_cut)
        delays = [r["received_at"].timestamp() - healed_at for r in received]
        assert len(delays) == len(during_cut) > 0.5 * 100 * CUT_S
        assert watch.reapplied >= 1  # the hub noticed the PoP was back and resumed at once
        # The re-applied source resumed where it was: the hub holds each PoP message once.
        pop_messages = 0
        for pop in POPS:
            info = await hub.jetstream(domain=pop).stream_info(subjects.pop_usage_stream(pop))
            pop_messages += info.state.messages
        hub_info = await hub.jetstream().stream_info(subjects.usage_stream)
        assert hub_info.state.messages == pop_messages
        during_outage = [event_id for event_id, (_, at) in sent(tmp_path / "sent-us-east.txt").items()
                         if nats_killed_at <= at < nats_back_at]
        back = await pool.fetch("SELECT received_at FROM metering.usage_events"
                                " WHERE event_id = ANY($1::text[])", during_outage)
        outage_delays = [r["received_at"].timestamp() - nats_back_at for r in back]
        assert len(outage_delays) == len(during_outage) > 0.5 * 100 * NATS_DOWN_S
        print(f"\nPoP cut {CUT_S} s: {len(during_cut)} events spooled during the cut;"
              f" usage delay after the heal p50 {percentile(delays, 0.5):.2f} s,"
              f" p99 {percentile(delays, 0.99):.2f} s; lost 0, doubled 0;"
              f" WAN to the hub {wan_per_1000 / 1024:.0f} KiB per 1,000 events."
              f"\nPoP NATS SIGKILLed {NATS_DOWN_S} s: {len(during_outage)} events spooled on disk"
              f" meanwhile; delay after its restart p50 {percentile(outage_delays, 0.5):.2f} s,"
              f" p99 {percentile(outage_delays, 0.99):.2f} s; lost 0, doubled 0")
    finally:
        stop.touch()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hub is not None:
            await hub.close()
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
