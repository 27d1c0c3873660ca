"""Runners through the whole platform: the MiniLM embedding family registered and served
over the public API, and a runner that loses NATS for a while and is killed mid-way —
the ledger must still hold exactly what the clients were answered.

This module runs its own nats-server (so it can stop it) under `edgeinfer up`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from edgeinfer.services.registry.demo_model import minilm_artifact, sample_digit
from edgeinfer.shared.bus import connect
from edgeinfer.shared.embedded import EmbeddedNats, free_port, start_nats
from edgeinfer.shared.events import RunnerHeartbeat, heartbeat_decoder
from edgeinfer.shared.hops import HopSigner
from edgeinfer.shared.subjects import Subjects
from tests.e2e.conftest import Stack, ledger_events, process_env, run
from tests.hops import hop, trusted_signer
from tests.unit.test_model_formats import tar_of

pytestmark = pytest.mark.e2e

# A killed runner's replacement comes from the autoscaler's next pass; a runner that cannot
# reach NATS on SIGTERM gives up flushing quickly (its spool keeps the events).
GIVEN_NATS = True  # the test stops it (the nats_url fixture below)
STACK_ENV = {"EDGEINFER_DRAIN_TIMEOUT_S": "3"}

TEXTS = ["GPU-seconds are billed per request.", "edge inference",
         "The nearest point of presence that may serve the request answers it."]


class PrivateNats:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.server: EmbeddedNats = start_nats(directory, port=self.port)
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = start_nats(self.directory, port=self.port)  # same store: streams survive


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateNats]:
    nats = PrivateNats(tmp_path_factory.mktemp("nats"))
    yield nats
    nats.stop()


@pytest.fixture(scope="module")
def nats_url(private_nats: PrivateNats) -> str:
    """Overrides the session's NATS for this module's stack."""
    return private_nats.url


def wait_for_ledger(database_url: str, tenant_id: str, deployment_id: str,
                    expected: dict[str, int], timeout: float = 90) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = run(ledger_events(database_url, tenant_id, deployment_id))
        if len(got) >= len(expected) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


async def heartbeats(nats_url: str, namespace: str, seconds: float) -> dict[str, RunnerHeartbeat]:
    nc = await connect(nats_url, name="test-heartbeats")
    seen: dict[str, RunnerHeartbeat] = {}

    async def on_beat(msg: Any) -> None:
        beat = heartbeat_decoder.decode(msg.data)
        seen[beat.runner_id] = beat

    await nc.subscribe(Subjects(namespace).heartbeat_wildcard, cb=on_beat)
    await asyncio.sleep(seconds)
    await nc.drain()
    return seen


def test_minilm_is_registered_deployed_and_billed_by_tokens(stack: Stack, stack_database: str) -> None:
    auth = stack.auth()
    url = f"{stack.api}/v1/models/minilm/versions/1?framework=sentence-embedding"
    # The registry checks the artifact before storing it: a pickle is never accepted.
    bad = httpx.put(url, content=tar_of({"pytorch_model.bin": b"\x80\x04pickle"}),
                    headers=auth, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_artifact", bad.text
    up = httpx.put(url, content=minilm_artifact(), headers=auth, timeout=120)
    assert up.status_code == 200, up.text
    assert up.json()["framework"] == "sentence-embedding"
    # A model keeps its framework: an ONNX version of it is refused.
    clash = httpx.put(f"{stack.api}/v1/models/minilm/versions/2?framework=onnx",
                      content=b"x", headers=auth, timeout=60)
    assert clash.status_code == 400  # not valid ONNX: refused before the framework check
    dep = httpx.put(f"{stack.api}/v1/deployments/embed", headers=auth, json={
        "model": "minilm", "version": "1", "pops": ["eu-west"], "min_replicas": 1})
    assert dep.status_code == 200, dep.text
    deployment_id = dep.json()["id"]

    def embed(texts: list[Any]) -> httpx.Response:
        return httpx.post(f"{stack.router}/v1/deployments/embed/infer", headers=auth,
                          json={"inputs": texts}, timeout=180)

    first = embed(TEXTS)  # held while the runner loads the model
    assert first.status_code == 200, first.text
    body = first.json()
    assert [len(v) for v in body["outputs"]["embeddings"]] == [384] * 3
    assert body["usage"]["tokens"] == sum(body["outputs"]["tokens"])
    # Concurrent requests of very different lengths batch together on the runner; each is
    # charged by its own tokens.
    texts = [[f"request {i}: " + "edge " * (5 + 40 * (i % 3))] for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(embed, texts))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    usages = [a.json()["usage"] for a in [first, *answers]]
    assert max(u["batch_requests"] for u in usages) > 1, "no two requests were ever batched"
    # Bad input is refused with a reason before the model and is never charged.
    refused = embed(["fine", 3.5])
    assert refused.status_code == 400 and "Expected `str`" in refused.text, refused.text
    empty = embed(["fine", " "])  # the router checks the shape, the runner the content
    assert empty.status_code == 400 and "non-empty string" in empty.text, empty.text

    received = {u["event_id"]: u["gpu_us"] for u in usages}
    ledger = wait_for_ledger(stack_database, stack.ready["tenant_id"], deployment_id, received)
    assert ledger == received


def test_runner_keeps_usage_through_nats_outage_and_kill(stack: Stack, stack_database: str,
                                                         private_nats: PrivateNats) -> None:
    """Load straight at a runner; stop NATS mid-way; SIGKILL the runner while NATS is down
    (no graceful flush); bring NATS back. The replacement in the same slot publishes what
    the killed one spooled: the ledger equals what the clients received, to the event."""
    namespace = stack.ready["namespace"]
    beats = run(heartbeats(private_nats.url, namespace, 2.5))
    digits = stack.ready["deployment_id"]
    runner = next(b for b in beats.values() if b.deployment_id == digits and b.pop == "us-east")
    received: dict[str, int] = {}
    signer = run(trusted_signer(private_nats.url, namespace))
    tenant = stack.ready["tenant_id"]

    def call(i: int) -> None:
        resp = httpx.post(f"{runner.url}/infer", timeout=30, json={"inputs": [sample_digit(i % 10)]},
                          headers=hop(signer, tenant, digits, f"fault-{i}"))
        assert resp.status_code == 200, resp.text
        received[resp.json()["usage"]["event_id"]] = resp.json()["usage"]["gpu_us"]

    for i in range(200):
        call(i)
    # Only a router's signed token is served, and the tenant is the token's: a request with
    # none, a forged or expired one, or one for another deployment is refused and not
    # charged (the ledger below holds exactly the 200s).
    forged = hop(HopSigner(signer.kid), "ten_someone_else", digits)  # same id, other key
    for headers in ({}, {"edgeinfer-hop": "not.a.token"}, forged,
                    hop(signer, tenant, "dep_other"), hop(signer, tenant, digits, ttl_s=-1),
                    hop(HopSigner(), tenant, digits)):  # a key nobody published
        refused = httpx.post(f"{runner.url}/infer", timeout=30,
                             json={"tenant_id": "ten_x", "inputs": [sample_digit(0)]},
                             headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
    private_nats.stop()
    for i in range(200, 500):  # answered while NATS is down: the outbox holds the usage
        call(i)
    tree = _runner_tree(stack, runner.runner_id)
    for proc in tree:
        proc.kill()
    psutil.wait_procs(tree, timeout=10)
    time.sleep(2)
    private_nats.restart()

    ledger = wait_for_ledger(stack_database, stack.ready["tenant_id"], digits,
                             received, timeout=120)
    # The deployment's whole ledger, not only the ids the clients saw: nothing else served
    # it in this module, so an extra or a doubled event would show here.
    assert len(received) == 500
    assert ledger == received
    time.sleep(2)  # and nothing arrives late (a replayed generation, a republished batch)
    assert run(ledger_events(stack_database, stack.ready["tenant_id"], digits)) == received


def _runner_tree(stack: Stack, runner_id: str) -> list[psutil.Process]:
    """The runner's BentoML arbiter (under the autoscaler, under `edgeinfer up`) and its
    workers, which share its environment."""
    mine = [p for p in psutil.Process(stack.process.pid).children(recursive=True)
            if process_env(p).get("EDGEINFER_RUNNER_ID") == runner_id]
    pids = {p.pid for p in mine}
    for p in mine:
        if p.ppid() not in pids:
            return [p, *p.children(recursive=True)]
    raise AssertionError(f"runner {runner_id} has no process under edgeinfer up")


def test_with_nats_gone_the_router_serves_what_it_knows_and_never_answers_500(
        stack: Stack, private_nats: PrivateNats) -> None:
    """NATS SIGKILLed under `edgeinfer up`: the router keeps serving a tenant and a
    deployment it has seen (bounded staleness) from the replicas it last heard of; what it
    cannot decide without NATS (a key it never saw) is a 503 with Retry-After, never a 500.
    Once NATS is back, everything is served as before."""
    def infer(key: str | None = None) -> httpx.Response:
        return httpx.post(f"{stack.router}/v1/deployments/digits/infer", timeout=30,
                          headers=stack.auth(key), json={"inputs": [sample_digit(3)]})

    deadline = time.monotonic() + 60
    while infer().status_code != 200:  # the previous test's replacement runner may be starting
        assert time.monotonic() < deadline, "digits is not being served"
        time.sleep(0.5)
    private_nats.server.process.kill()
    private_nats.server.process.wait()
    try:
        answers = [infer() for _ in range(40)]
        statuses = [a.status_code for a in answers]
        assert all(s in (200, 503) for s in statuses), statuses
        assert statuses.count(200) >= 30, statuses  # served from what the router knew
        assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
        unseen = infer(key="ei_never_seen_at_this_pop")
        assert unseen.status_code == 503, unseen.text
        assert unseen.json()["error"]["code"] == "unavailable"
        assert int(unseen.headers["retry-after"]) >= 1
    finally:
        private_nats.restart()
    deadline = time.monotonic() + 30
    while (again := infer()).status_code != 200:
        assert time.monotonic() < deadline, again.text
        time.sleep(0.5)
