"""The router against real runner processes, real NATS and the real control plane."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import psutil
import pytest

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from edgeinfer.services.runner.supervisor import alive
from edgeinfer.shared.bus import connect
from edgeinfer.shared.events import BudgetAlert, BudgetState, DemandSignal, encode, new_id
from edgeinfer.shared.subjects import Subjects
from tests.e2e.conftest import Stack, process_cmdline, process_env

pytestmark = pytest.mark.e2e

# One request at a time per runner, so a second concurrent request must spill.
# Short windows so scale to zero shows within the test: 5 s keep-alive after 3 s of no load.
STACK_ENV = {"EDGEINFER_RUNNER_CAPACITY": "1", "EDGEINFER_SCALE_TO_ZERO_AFTER_S": "5",
             "EDGEINFER_STABLE_WINDOW_S": "3", "EDGEINFER_PANIC_WINDOW_S": "1"}

BODY = {"inputs": [sample_digit(3)]}


class Tenant:
    def __init__(self, stack: Stack, tenant_id: str, key: str) -> None:
        self.stack = stack
        self.id = tenant_id
        self.key = key

    def infer(self, deployment: str, region: str = "eu", key: str | None = None,
              **headers: str) -> httpx.Response:
        return httpx.post(f"{self.stack.router}/v1/deployments/{deployment}/infer",
                          headers={"Authorization": f"Bearer {key or self.key}",
                                   "X-Client-Region": region, **headers}, json=BODY, timeout=120)


def admin(stack: Stack, method: str, path: str, json: Any = None) -> httpx.Response:
    return httpx.request(method, f"{stack.api}/admin{path}", json=json, timeout=30,
                         headers={"Authorization": f"Bearer {stack.ready['admin_token']}"})


@pytest.fixture(scope="module")
def tenant(stack: Stack) -> Tenant:
    created = admin(stack, "POST", "/tenants", {"name": "router-tests"})
    tenant_id = created.json()["id"]
    key = admin(stack, "POST", f"/tenants/{tenant_id}/keys", {}).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    up = httpx.put(f"{stack.api}/v1/models/digits/versions/1", content=digits_onnx(),
                   headers={**auth, "Content-Type": "application/octet-stream"}, timeout=60)
    assert up.status_code == 200, up.text
    for name in ("cold", "cold-timeout"):
        dep = httpx.put(f"{stack.api}/v1/deployments/{name}", headers=auth, json={
            "model": "digits", "version": "1", "pops": ["eu-west"], "min_replicas": 0})
        assert dep.status_code == 200, dep.text
    return Tenant(stack, tenant_id, key)


def test_a_held_request_is_served_when_the_first_replica_is_ready(tenant: Tenant) -> None:
    first = tenant.infer("cold", region="us")
    assert first.status_code == 200, first.text
    assert first.headers["x-edgeinfer-cold-start"] == "true"
    assert int(first.headers["x-edgeinfer-cold-start-wait-ms"]) > 0
    # Residency: pinned to eu-west, so a US client is served there, never in us-east.
    assert first.headers["x-edgeinfer-pop"] == "eu-west"
    second = tenant.infer("cold")
    assert second.headers["x-edgeinfer-cold-start"] == "false"


def test_decisions_are_kept_with_their_reasons_for_admins(tenant: Tenant) -> None:
    resp = admin(tenant.stack, "GET", "/autoscaler/decisions?limit=200")
    assert resp.status_code == 200, resp.text
    decisions = resp.json()["decisions"]
    # The held request woke the EU-pinned deployment: its held load panics the policy,
    # capped at max_replicas 1; never a decision for us-east, outside its residency rule.
    cold_id = httpx.get(f"{tenant.stack.api}/v1/deployments/cold", headers={
        "Authorization": f"Bearer {tenant.key}"}).json()["id"]
    cold = [d for d in decisions if d["deployment_id"] == cold_id]
    woken = [d for d in cold if d["desired"] == 1 and d["pop"] == "eu-west"]
    assert woken and all(d["reason"] for d in woken)
    assert {d["pop"] for d in cold} == {"eu-west"}, "a decision outside the residency rule"
    assert all({"stable_concurrency", "panic_concurrency", "ready", "starting", "metrics_ok"}
               <= set(d) for d in decisions)
    assert httpx.get(f"{tenant.stack.api}/admin/autoscaler/decisions",
                     headers={"Authorization": f"Bearer {tenant.key}"}).status_code == 401


def test_a_deployment_in_use_stays_up_and_an_idle_one_scales_to_zero(tenant: Tenant) -> None:
    """Scale-to-zero after 5 s idle (STACK_ENV): 8 s of a request a second keeps the replica;
    then, idle, it is drained and stopped, and the next request is a cold start again."""
    for _ in range(8):
        resp = tenant.infer("cold")
        assert resp.status_code == 200
        assert resp.headers["x-edgeinfer-cold-start"] == "false"
        time.sleep(1.0)
    deployment_id = httpx.get(f"{tenant.stack.api}/v1/deployments/cold", headers={
        "Authorization": f"Bearer {tenant.key}"}).json()["id"]
    deadline = time.monotonic() + 30
    while _runners_of(tenant.stack, deployment_id):
        assert time.monotonic() < deadline, "the idle deployment was not scaled to zero"
        time.sleep(0.5)
    again = tenant.infer("cold")
    assert again.status_code == 200
    assert again.headers["x-edgeinfer-cold-start"] == "true"


def _runners_of(stack: Stack, deployment_id: str) -> list[psutil.Process]:
    return [p for p in psutil.Process(stack.process.pid).children(recursive=True)
            if process_env(p).get("EDGEINFER_DEPLOYMENT_ID") == deployment_id]


def test_activity_signals_count_every_request_served(tenant: Tenant) -> None:
    """The router's activity signals (at most one a second per deployment × PoP) carry the
    requests served since the previous one: the autoscaler's keep-alive learns the rate."""
    stack = tenant.stack
    signals: list[DemandSignal] = []
    subscribed = threading.Event()
    done = threading.Event()

    async def listen() -> None:
        nc = await connect(stack.ready["nats_url"], "test-activity")

        async def on_signal(msg: Any) -> None:
            signals.append(msgspec.json.decode(msg.data, type=DemandSignal))

        await nc.subscribe(Subjects(stack.ready["namespace"]).demand(deployment_id),
                           cb=on_signal)
        await nc.flush()
        subscribed.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await nc.flush()
        await nc.close()

    auth = {"Authorization": f"Bearer {tenant.key}"}
    deployment_id = httpx.get(f"{stack.api}/v1/deployments/cold", headers=auth).json()["id"]
    listener = threading.Thread(target=lambda: asyncio.run(listen()))
    listener.start()
    assert subscribed.wait(10)
    for _ in range(5):
        assert tenant.infer("cold").status_code == 200
    time.sleep(1.2)  # the next signal may go out: it carries what the last one could not
    assert tenant.infer("cold").status_code == 200
    time.sleep(0.5)
    done.set()
    listener.join()
    activity = [s for s in signals if s.held_requests == 0 and s.pop == "eu-west"]
    assert sum(s.requests for s in activity) == 6  # one signal or several, none lost


def test_a_cold_start_that_outlasts_the_tenants_timeout_is_a_503(tenant: Tenant) -> None:
    resp = tenant.infer("cold-timeout", **{"X-Scale-Up-Timeout": "0"})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "cold_start_timeout"
    assert int(resp.headers["retry-after"]) > 0
    bad = tenant.infer("cold-timeout", **{"X-Scale-Up-Timeout": "soon"})
    assert bad.status_code == 400


def test_rate_limit_answers_429_with_retry_after(tenant: Tenant) -> None:
    assert admin(tenant.stack, "PATCH", f"/tenants/{tenant.id}",
                 {"rate_limit_rps": 0.2, "rate_limit_burst": 2}).status_code == 200
    time.sleep(0.3)  # the change event reaches the router
    try:
        codes = [tenant.infer("cold").status_code for _ in range(3)]
        assert codes[:2] == [200, 200]
        third = tenant.infer("cold")
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limited"
        assert int(third.headers["retry-after"]) >= 1
    finally:
        admin(tenant.stack, "PATCH", f"/tenants/{tenant.id}",
              {"rate_limit_rps": 100, "rate_limit_burst": 200})
        time.sleep(0.3)


def test_suspension_is_a_403_and_lifting_it_restores_service(tenant: Tenant) -> None:
    admin(tenant.stack, "PATCH", f"/tenants/{tenant.id}", {"status": "suspended"})
    time.sleep(0.3)
    resp = tenant.infer("cold")
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "tenant_suspended"
    admin(tenant.stack, "PATCH", f"/tenants/{tenant.id}", {"status": "active"})
    time.sleep(0.3)
    assert tenant.infer("cold").status_code == 200


def test_a_revoked_key_stops_working_within_a_second(tenant: Tenant) -> None:
    issued = admin(tenant.stack, "POST", f"/tenants/{tenant.id}/keys", {"label": "temp"}).json()
    assert tenant.infer("cold", key=issued["key"]).status_code == 200  # now cached
    assert admin(tenant.stack, "DELETE",
                 f"/tenants/{tenant.id}/keys/{issued['id']}").status_code == 200
    time.sleep(1.0)
    resp = tenant.infer("cold", key=issued["key"])
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_a_budget_hard_stop_is_a_402_until_lifted(tenant: Tenant) -> None:
    subjects = Subjects(tenant.stack.ready["namespace"])

    async def publish(blocked: bool) -> None:
        nc = await connect(tenant.stack.ready["nats_url"], "test")
        await nc.publish(subjects.budget(tenant.id), encode(BudgetState(
            id=new_id(), source="test", time=datetime.now(UTC), tenant_id=tenant.id,
            blocked=blocked, reason="monthly limit of 1.00 USD reached")))
        await nc.flush()
        await nc.close()

    asyncio.run(publish(True))
    time.sleep(0.3)
    resp = tenant.infer("cold")
    assert resp.status_code == 402
    assert "1.00 USD" in resp.json()["error"]["message"]
    asyncio.run(publish(False))
    time.sleep(0.3)
    assert tenant.infer("cold").status_code == 200


def test_a_budget_with_a_hard_stop_stops_the_tenant_once_spend_reaches_it(tenant: Tenant) -> None:
    """The whole loop: real spend in the ledger crosses a (tiny) limit → metering alerts and
    publishes the stop → the router answers 402 → deleting the budget lifts it."""
    auth = {"Authorization": f"Bearer {tenant.key}"}
    assert tenant.infer("cold").status_code == 200  # some spend this month, at least
    alerts: list[BudgetAlert] = []
    subscribed = threading.Event()

    async def listen() -> None:  # the alert events, as a notifier would receive them
        nc = await connect(tenant.stack.ready["nats_url"], "test-alerts")
        got_all = asyncio.Event()

        async def on_alert(msg: Any) -> None:
            alerts.append(msgspec.json.decode(msg.data, type=BudgetAlert))
            if len(alerts) == 3:
                got_all.set()

        await nc.subscribe(Subjects(tenant.stack.ready["namespace"]).budget_alert(tenant.id),
                           cb=on_alert)
        await nc.flush()
        subscribed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(got_all.wait(), 20)
        await nc.close()

    listener = threading.Thread(target=lambda: asyncio.run(listen()))
    listener.start()
    assert subscribed.wait(10)
    put = httpx.put(f"{tenant.stack.api}/v1/budget", headers=auth, json={
        "monthly_limit": "0.0000000001", "currency": "USD", "hard_stop": True})
    assert put.status_code == 200, put.text
    deadline = time.monotonic() + 15
    while (resp := tenant.infer("cold")).status_code == 200:
        assert time.monotonic() < deadline, "the hard stop never reached the router"
        time.sleep(0.3)
    assert resp.status_code == 402
    assert resp.json()["error"]["code"] == "budget_exceeded"
    budget = httpx.get(f"{tenant.stack.api}/v1/budget", headers=auth).json()
    assert budget["blocked"] is True
    assert [a["threshold"] for a in budget["alerts"]] == [50, 80, 100]
    listener.join()
    assert sorted(a.threshold_pct for a in alerts) == [50, 80, 100]
    assert {a.tenant_id for a in alerts} == {tenant.id}
    assert httpx.put(f"{tenant.stack.api}/v1/budget", headers=auth,
                     json={"monthly_limit": 5}).status_code == 400  # money is never a float
    httpx.delete(f"{tenant.stack.api}/v1/budget", headers=auth)
    time.sleep(0.3)
    assert tenant.infer("cold").status_code == 200


def test_an_oversized_body_is_a_413(tenant: Tenant) -> None:
    resp = httpx.post(f"{tenant.stack.router}/v1/deployments/cold/infer",
                      headers={"Authorization": f"Bearer {tenant.key}"},
                      content=b"[" + b"1," * 800_000 + b"1]", timeout=30)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "body_too_large"


async def test_load_spills_to_the_next_allowed_pop_and_then_is_refused(stack: Stack) -> None:
    """digits runs in eu-west and us-east with capacity 1 each; an EU client sends 10 slow
    requests at once that will not wait for a slot (X-Queue-Timeout: 0): one is served in
    eu-west, one spills to us-east, the rest are refused with 503 + Retry-After (never
    sent abroad beyond capacity)."""
    heavy = {"inputs": [sample_digit(i % 10) for i in range(1024)]}
    auth = {"Authorization": f"Bearer {stack.key}", "X-Client-Region": "eu", "X-Queue-Timeout": "0"}
    async with httpx.AsyncClient(timeout=60) as http:
        answers = await asyncio.gather(*(
            http.post(f"{stack.router}/v1/deployments/digits/infer", json=heavy, headers=auth)
            for _ in range(10)))
    served = sorted(a.headers["x-edgeinfer-pop"] for a in answers if a.status_code == 200)
    refused = [a for a in answers if a.status_code != 200]
    assert "eu-west" in served and "us-east" in served, [a.status_code for a in answers]
    assert set(served) == {"eu-west", "us-east"}  # the deployment's PoPs and no other
    # Two slots for ten requests at once: some must have been refused, and each clearly.
    assert refused, "no request was refused: the capacity check was never exercised"
    assert all(a.status_code == 503 and a.json()["error"]["code"] == "saturated"
               and int(a.headers["retry-after"]) >= 1 for a in refused)


async def test_at_capacity_requests_wait_for_a_slot_instead_of_being_refused(stack: Stack) -> None:
    """The same ten slow requests, allowed to wait (the default queue timeout): every one is
    served, in the deployment's PoPs only, those that found no free slot after a wait."""
    heavy = {"inputs": [sample_digit(i % 10) for i in range(1024)]}
    auth = {"Authorization": f"Bearer {stack.key}", "X-Client-Region": "eu"}
    async with httpx.AsyncClient(timeout=60) as http:
        answers = await asyncio.gather(*(
            http.post(f"{stack.router}/v1/deployments/digits/infer", json=heavy, headers=auth)
            for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    stack.served += 10
    assert {a.headers["x-edgeinfer-pop"] for a in answers} <= {"eu-west", "us-east"}
    waits = sorted(int(a.headers["x-edgeinfer-queue-wait-ms"]) for a in answers)
    assert waits[0] == 0 and waits[-1] > 0, waits  # two slots: most of them queued


def test_a_killed_runner_fails_over_to_the_next_allowed_pop(stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {stack.key}", "X-Client-Region": "eu"}
    url = f"{stack.router}/v1/deployments/digits/infer"
    assert httpx.post(url, json=BODY, headers=auth).headers["x-edgeinfer-pop"] == "eu-west"
    # us-east must be serving when eu-west dies (its replica from the spill test may have
    # scaled to zero since): a US client's request wakes it or keeps it warm.
    us = httpx.post(url, json=BODY, headers={**auth, "X-Client-Region": "us"}, timeout=60)
    assert us.headers["x-edgeinfer-pop"] == "us-east"
    victims = [p for p in psutil.Process(stack.process.pid).children(recursive=True)
               if process_env(p).get("EDGEINFER_POP") == "eu-west"
               and process_env(p).get("EDGEINFER_DEPLOYMENT_ID") == stack.ready["deployment_id"]]
    assert victims, "found no eu-west runner to kill"
    for p in victims:
        p.kill()
    # Dead, not reaped: the launcher reaps its runner on its next tick and starts a
    # replacement at once, which may be ready before a wait for the reap returns.
    _wait_dead(victims, timeout_s=10)
    resp = httpx.post(url, json=BODY, headers=auth, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgeinfer-pop"] == "us-east"


def test_metrics_count_requests_by_outcome(stack: Stack) -> None:
    text = httpx.get(f"{stack.router}/metrics").text
    assert 'edgeinfer_router_requests_total{' in text
    for outcome in ("ok", "rate_limited", "tenant_suspended", "budget_exceeded",
                    "cold_start_timeout"):
        assert f'outcome="{outcome}"' in text, outcome
    assert "edgeinfer_router_overhead_seconds_bucket" in text
    assert "edgeinfer_router_held_requests" in text


def _wait_dead(procs: list[psutil.Process], timeout_s: float) -> None:
    """Until every process has exited (a zombie counts: it runs nothing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [p for p in procs if alive(p)]
        if not running:
            return
        assert time.monotonic() < deadline, f"still running after SIGKILL: {running}"
        time.sleep(0.005)




def test_a_hard_killed_launcher_leaves_no_runner_behind(stack: Stack) -> None:
    """SIGKILL gives the launcher no chance to stop its runners: they notice their
    supervisor is gone and stop themselves (BentoML workers would otherwise live on)."""
    runners = [p for p in psutil.Process(stack.process.pid).children(recursive=True)
               if "bentoml" in " ".join(process_cmdline(p))]
    assert runners
    stack.process.kill()
    stack.process.wait()
    _, alive = psutil.wait_procs(runners, timeout=30)
    assert alive == [], [process_cmdline(p) for p in alive]
