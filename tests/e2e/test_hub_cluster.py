"""`edgeinfer up` on a NATS cluster of three (the hub's layout, generated from a topology
description, on loopback ports) with every stream and bucket replicated three times: one
server SIGKILLed under load and restarted later loses and doubles no usage event, the API
keeps answering, and no inference request gets a 5xx other than a 503 with Retry-After."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeinfer.services.registry.demo_model import sample_digit
from edgeinfer.shared.embedded import free_port, nats_server_binary, wait_for_port
from edgeinfer.shared.nats_topology import parse_topology, render
from tests.conftest import jetstream_ready
from tests.e2e.conftest import Stack, ledger_events, run

pytestmark = pytest.mark.e2e

GIVEN_NATS = True  # a cluster of three, one of them killed (the nats_url fixture below)
STACK_ENV = {"EDGEINFER_STREAM_REPLICAS": "3"}


class Cluster:
    def __init__(self, root: Path) -> None:
        # Without users: `edgeinfer up` on a given NATS gives its services none to log in with.
        text = "auth = false\n" + "\n".join(f'[[hub]]\nname = "hub-{i}"\nhost = "127.0.0.1"\n'
                         f'client_port = {free_port()}\ncluster_port = {free_port()}\n'
                         f'leaf_port = {free_port()}\n' for i in (1, 2, 3))
        # A PoP entry the description needs; its leaf node is not started here.
        text += '[[pops]]\nname = "eu-west"\nregion = "eu-west"\njurisdiction = "eu"\nhost = "127.0.0.1"\n'
        self.topology = parse_topology(text)
        self.configs = render(self.topology, root / "conf", root / "store")
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return ",".join(self.topology.hub_urls)

    def start(self, index: int) -> None:
        server = self.topology.hub[index]
        with open(self.root / f"{server.name}.log", "ab") as log:
            self.processes[server.name] = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.configs[server.name])], stdout=log,
                stderr=subprocess.STDOUT)
        wait_for_port(server.client_port, timeout=15)

    def kill(self, index: int) -> None:
        process = self.processes[self.topology.hub[index].name]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("hub"))
    try:
        for i in range(3):
            cluster.start(i)
        run(jetstream_ready(cluster.url))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def nats_url(cluster: Cluster) -> str:
    """This module's stack runs on the cluster (all three URLs)."""
    return cluster.url


def test_losing_a_hub_server_under_load_loses_nothing_and_refuses_nothing_badly(
        stack: Stack, stack_database: str, cluster: Cluster) -> None:
    received: dict[str, int] = {}
    bad: list[str] = []
    statuses: list[int] = []
    api_statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                resp = http.post(f"{stack.router}/v1/deployments/digits/infer",
                                 headers=stack.auth(), json={"inputs": [sample_digit(2)]})
                statuses.append(resp.status_code)
                if resp.status_code == 200:
                    usage = resp.json()["usage"]
                    received[usage["event_id"]] = usage["gpu_us"]
                elif resp.status_code != 503 or not resp.headers.get("retry-after"):
                    bad.append(f"{resp.status_code} {resp.text[:200]}")
                api = http.get(f"{stack.api}/v1/deployments", headers=stack.auth())
                api_statuses.append(api.status_code)
                time.sleep(0.02)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(5)
        cluster.kill(1)  # SIGKILL: the cluster keeps its quorum of two
        killed_at = len(statuses)
        time.sleep(10)
        during = statuses[killed_at:]
        cluster.start(1)
        time.sleep(5)
    finally:
        stop.set()
        worker.join(60)
    assert bad == [], bad[:5]
    assert during and during.count(200) >= 0.9 * len(during), during
    assert set(api_statuses) == {200}, sorted(set(api_statuses))

    deadline = time.monotonic() + 60
    while (got := run(ledger_events(stack_database, stack.ready["tenant_id"]))) != received:
        assert time.monotonic() < deadline, (len(got), len(received))
        time.sleep(0.5)
    print(f"\nhub server SIGKILLed under load: {statuses.count(200)} of {len(statuses)}"
          f" requests 200 ({len(during) - during.count(200)} not 200 while it was down),"
          f" {len(api_statuses)} API calls all 200; ledger = Σ gpu_us of every 200")
