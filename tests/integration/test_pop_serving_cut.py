"""A PoP keeps serving its known tenants through a cut from the hub, on hosts made of
network namespaces: the hub's NATS cluster in one, each PoP's leaf node, router and
runner in its own, the control plane (api, registry, metering, billing) at the test's end.

Under steady load on both PoPs, one of them cut for 60 s: at least 99 % of each PoP's
answers are 200 (the cut one's from
its bounded-stale caches and its own NATS); a key revoked at the hub during the cut is
refused at the PoP within 5 s of the heal; the EU-only deployment is never served by the
US PoP (503, never abroad); after the heal the ledger equals the `gpu_us` of every 200,
event by event.

Every process logs in to NATS as its own user (the topology's default, `auth = true`):
the control plane's four services each in a process of its own, each PoP's router and
runner as `router-<pop>` and `runner-<pop>`; the streams are made once by the admin
(`edgeinfer streams`). None of them meets a permissions violation along the way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.shared.embedded import free_port, nats_server_binary, wait_for_port
from edgeinfer.shared.nats_permissions import user_name, with_user
from edgeinfer.shared.nats_topology import parse_topology, render
from tests.conftest import jetstream_ready
from tests.e2e.conftest import billable_us, ledger_events, run
from tests.integration.conftest import POPS
from tests.netns import Hosts

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CUT_S = 60
ADMIN = "adm_pop_serving_test"


class Processes:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, prefix: list[str], cmd: list[str], log: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.root / log, "ab") as out:
            process = subprocess.Popen([*prefix, *cmd], cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT, env=env)
        self.all.append(process)
        return process

    def stop(self) -> None:
        for process in self.all:
            if process.poll() is None:
                process.terminate()
        for process in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
            if process.poll() is None:
                process.kill()


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(0.2)


@pytest.mark.timeout(480)
def test_a_cut_pop_keeps_serving_known_tenants_and_bills_every_answer(
        hosts: Hosts, database_url: str, namespace: str, tmp_path: Path) -> None:
    hub_host = hosts.hub_address
    description = tmp_path / "topology.toml"
    description.write_text(f'namespace = "{namespace}"\n' + "\n".join(
        f'[[hub]]\nname = "hub-{i}"\nhost = "{hub_host}"\nclient_port = {4221 + i}\n'
        f'cluster_port = {6221 + i}\nleaf_port = {7421 + i}\n' for i in (1, 2, 3)) + "\n".join(
        f'[[pops]]\nname = "{pop}"\nregion = "{pop}"\njurisdiction = "{pop[:2]}"\n'
        f'host = "{hosts.pops[pop]}"\n' for pop in POPS))
    topology = parse_topology(description.read_text())
    configs = render(topology, tmp_path / "conf", tmp_path / "store")
    procs = Processes(tmp_path)
    common = {**os.environ, "EDGEINFER_NAMESPACE": namespace, "EDGEINFER_LOG_LEVEL": "WARNING",
              "EDGEINFER_POPS": "eu-west:eu-west:eu,us-east:us-east:us"}
    try:
        for server in topology.hub:
            procs.start(hosts.exec_prefix(hosts.hub_ns), [nats_server_binary(), "-c",
                        str(configs[server.name])], f"{server.name}.log")
        for pop in topology.pops:
            procs.start(hosts.exec_prefix(hosts.ns(pop.pop.name)), [nats_server_binary(), "-c",
                        str(configs[f"pop-{pop.pop.name}"])], f"pop-{pop.pop.name}.log")
        for server in topology.hub:
            wait_for_port(server.client_port, timeout=20, host=hub_host)
        credentials = json.loads(configs["credentials"].read_text())

        def hub_as(user: str) -> str:
            return with_user(",".join(topology.hub_urls), user, credentials[user])

        def pop_as(role: str, pop: str) -> str:
            user = user_name(role, pop)
            return with_user(topology.pop(pop).client_url, user, credentials[user])

        run(jetstream_ready(hub_as("admin")))
        hub_env = {**common, "DATABASE_URL": database_url, "EDGEINFER_STREAM_REPLICAS": "3",
                   "EDGEINFER_TOPOLOGY": str(description), "EDGEINFER_CREATE_STREAMS": "false",
                   "EDGEINFER_STATE_DIR": str(tmp_path / "hub-state")}
        made = subprocess.run([str(BIN / "edgeinfer"), "streams"], capture_output=True, text=True,
                              env={**hub_env, "NATS_URL": hub_as("admin")}, timeout=60)
        assert made.returncode == 0, made.stderr

        # The hub's control plane, at the test's end of the network: a process per service.
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        for service in ("registry", "metering", "billing", "api"):
            procs.start([], [str(BIN / "edgeinfer"), "run", service], f"{service}.log", {
                **hub_env, "NATS_URL": hub_as(service), "EDGEINFER_API_PORT": str(api_port),
                "EDGEINFER_ADMIN_TOKEN": ADMIN})
        wait_http(f"{api}/healthz")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tenant_id = httpx.post(f"{api}/admin/tenants", headers=admin, json={"name": "cut"},
                               timeout=30).json()["id"]
        keys = [httpx.post(f"{api}/admin/tenants/{tenant_id}/keys", headers=admin, json={},
                           timeout=30).json() for _ in range(2)]
        auth = {"Authorization": f"Bearer {keys[0]['key']}"}
        version = httpx.put(f"{api}/v1/models/digits/versions/1", content=digits_onnx(),
                            headers={**auth, "Content-Type": "application/octet-stream"},
                            timeout=60)
        assert version.status_code == 200, version.text
        deployments = {pop: httpx.put(f"{api}/v1/deployments/digits-{pop}", headers=auth,
                                      timeout=30, json={"model": "digits", "version": "1",
                                                        "pops": [pop], "min_replicas": 0}).json()
                       for pop in POPS}  # eu-west's is EU-only

        # Each PoP: a runner and a router on the PoP's own NATS (the runner fetches its
        # artifact from the hub's domain).
        for pop in POPS:
            runner_port = free_port()
            procs.start(hosts.exec_prefix(hosts.ns(pop)), [
                sys.executable, "-m", "bentoml", "serve", "edgeinfer.services.runner.service:Runner",
                "--host", "127.0.0.1", "--port", str(runner_port)], f"runner-{pop}.log", {
                **common, "NATS_URL": pop_as("runner", pop),
                "EDGEINFER_RUNNER_ID": f"r-{pop}-1", "EDGEINFER_POP": pop,
                "EDGEINFER_REGION": pop, "EDGEINFER_RUNNER_URL": f"http://127.0.0.1:{runner_port}",
                "EDGEINFER_DEPLOYMENT_ID": deployments[pop]["id"], "EDGEINFER_MODEL_VERSION": "1",
                "EDGEINFER_ARTIFACT_DIGEST": version.json()["artifact_digest"],
                "EDGEINFER_ARTIFACT_DOMAIN": "hub",
                "EDGEINFER_SPOOL_DIR": str(tmp_path / f"spool-{pop}"),
                "EDGEINFER_ARTIFACT_CACHE": str(tmp_path / f"artifacts-{pop}"),
                "BENTOML_HOME": str(tmp_path / f"bentoml-{pop}"), "BENTOML_DO_NOT_TRACK": "True",
                "OMP_NUM_THREADS": "1"})
        router_port = free_port()
        routers = {}
        for pop in POPS:
            procs.start(hosts.exec_prefix(hosts.ns(pop)), [str(BIN / "edgeinfer"), "run", "router"],
                        f"router-{pop}.log", {
                            **common, "NATS_URL": pop_as("router", pop),
                            "EDGEINFER_ROUTER_HOST": "0.0.0.0",
                            "EDGEINFER_ROUTER_PORT": str(router_port),
                            "EDGEINFER_ROUTER_POP": pop,
                            "EDGEINFER_STATE_DIR": str(tmp_path / f"state-{pop}")})
            routers[pop] = f"http://{hosts.clients[pop]}:{router_port}"
            wait_http(f"{routers[pop]}/healthz")

        received: dict[str, int] = {}  # every answer a client got: what must be billed

        def infer(pop: str, key: str, deployment: str | None = None,
                  timeout: str = "60") -> httpx.Response:
            resp = httpx.post(f"{routers[pop]}/v1/deployments/{deployment or 'digits-' + pop}"
                              "/infer", timeout=90,
                              headers={"Authorization": f"Bearer {key}", "X-Client-Region": pop[:2],
                                       "X-Scale-Up-Timeout": timeout},
                              json={"inputs": [sample_digit(7)]})
            if resp.status_code == 200:
                received[resp.json()["usage"]["event_id"]] = resp.json()["usage"]["gpu_us"]
            return resp

        for pop in POPS:
            first = infer(pop, keys[0]["key"], timeout="120")
            assert first.status_code == 200, first.text
        assert infer("eu-west", keys[1]["key"]).status_code == 200  # the key to revoke: cached

        def serve(pop: str, seconds: float) -> list[int]:
            statuses = []
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                statuses.append(infer(pop, keys[0]["key"]).status_code)
                time.sleep(0.05)
            return statuses

        # Steady load on both PoPs, one client each, from before the cut to after the heal.
        load = concurrent.futures.ThreadPoolExecutor(2)
        us_task = load.submit(serve, "us-east", 5 + CUT_S + 8)
        serve("eu-west", 5)
        hosts.cut("eu-west")
        cut_task = load.submit(serve, "eu-west", CUT_S)
        time.sleep(5)
        # Revoked at the hub while the PoP cannot hear of it.
        assert httpx.delete(f"{api}/admin/tenants/{tenant_id}/keys/{keys[1]['id']}",
                            headers=admin, timeout=30).status_code == 200
        # The EU-only deployment, asked of the US PoP during the cut: never served abroad.
        abroad = infer("us-east", keys[0]["key"], "digits-eu-west", timeout="1")
        during = cut_task.result()
        hosts.heal("eu-west")
        healed = time.monotonic()
        while (revoked := infer("eu-west", keys[1]["key"])).status_code == 200:
            assert time.monotonic() - healed < 5, "the revocation did not reach the PoP in 5 s"
            time.sleep(0.1)
        refused_after_s = time.monotonic() - healed
        serve("eu-west", 3)
        us = us_task.result()
        load.shutdown()

        assert revoked.status_code == 401, revoked.text
        assert during.count(200) >= 0.99 * len(during), sorted(set(during))
        assert us.count(200) >= 0.99 * len(us), sorted(set(us))  # the other PoP, unaffected
        assert abroad.status_code == 503 and abroad.headers.get("retry-after"), abroad.text

        deadline = time.monotonic() + 60
        while (got := run(ledger_events(database_url, tenant_id))) != received:
            assert time.monotonic() < deadline, (len(got), len(received))
            time.sleep(0.5)
        # Every answer a client got is billed, once: its router's confirmation crossed the
        # same cut link as the usage.
        while (billed := run(billable_us(database_url, tenant_id))) != sum(received.values()):
            assert time.monotonic() < deadline, (billed, sum(received.values()))
            time.sleep(0.5)
        refusals = [line for log in tmp_path.glob("*.log") for line in log.read_text().splitlines()
                    if "violation" in line.lower()]
        assert not refusals, refusals[:5]  # each process's work was within its user's rights
        print(f"\nPoP serving through a {CUT_S}-s cut: {during.count(200)} of {len(during)}"
              f" requests 200 during the cut (the uncut PoP: {us.count(200)} of {len(us)});"
              f" revoked key refused {refused_after_s:.2f} s after"
              f" the heal; EU-only deployment at the US PoP: {abroad.status_code}; ledger ="
              f" Σ gpu_us of {len(received)} answers")
    finally:
        procs.stop()
