"""`edgeinfer up` supervises every process it runs: each control-plane service, the embedded
nats-server and the embedded PostgreSQL. SIGKILLed, each is back within 5 s; inference
through the router goes on meanwhile (200, or for NATS a 503 with Retry-After — never a
500); and the usage of every 200 reaches the ledger once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from edgeinfer.services.registry.demo_model import sample_digit
from edgeinfer.services.runner.supervisor import alive
from tests.e2e.conftest import Stack, ledger_events, process_cmdline, process_env, run

pytestmark = pytest.mark.e2e

# The embedded nats-server and PostgreSQL, which `edgeinfer up` supervises.
STACK_ENV = {"NATS_URL": "", "DATABASE_URL": ""}
BACK_WITHIN_S = 5.0


def listener(port: int) -> int | None:
    """The pid listening on `port` on loopback, if any."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def processes(stack: Stack) -> dict[str, Any]:
    return json.loads(Path(stack.ready["processes"]).read_text())


def runner_roots(stack: Stack) -> set[int]:
    """The pids of the runners' BentoML arbiters (their workers share the environment)."""
    tree = [p for p in psutil.Process(stack.process.pid).children(recursive=True)
            if process_env(p).get("EDGEINFER_RUNNER_ID")]
    pids = {p.pid for p in tree}
    return {p.pid for p in tree if p.ppid() not in pids}


class Load:
    """Inference through the router, one request after another, in a thread; what each
    answered, and the usage of every 200 (what the ledger must hold)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.statuses: list[int | str] = []
        self.received: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def once(self) -> int | str:
        try:
            resp = httpx.post(f"{self.stack.router}/v1/deployments/digits/infer",
                              headers=self.stack.auth(), json={"inputs": [sample_digit(1)]},
                              timeout=30)
        except httpx.TransportError as exc:  # the router itself restarting
            self.statuses.append(type(exc).__name__)
            return type(exc).__name__
        self.statuses.append(resp.status_code)
        if resp.status_code == 200:
            self.received[resp.json()["usage"]["event_id"]] = resp.json()["usage"]["gpu_us"]
        return resp.status_code

    def _run(self) -> None:
        while not self._stop.is_set():
            self.once()
            time.sleep(0.02)

    def mark(self) -> int:
        return len(self.statuses)


def kill_and_wait_back(stack: Stack, name: str) -> float:
    """SIGKILL the service's process; seconds until its successor says it is ready."""
    before = processes(stack)[name]
    assert before["ready"], before
    victim = psutil.Process(before["pid"])
    assert process_cmdline(victim)[-2:] == ["run", name]
    killed_at = time.monotonic()
    victim.kill()
    while True:
        now = processes(stack)[name]
        if now["ready"] and now["pid"] != before["pid"]:
            break
        assert time.monotonic() - killed_at < BACK_WITHIN_S, f"{name} not back in 5 s: {now}"
        time.sleep(0.02)
    assert now["restarts"] == before["restarts"] + 1
    return time.monotonic() - killed_at


class Answered:
    """What the clients got, over the module: the usage of every 200, and how many requests
    had their connection cut mid-way (the router killed under them)."""

    def __init__(self) -> None:
        self.received: dict[str, int] = {}
        self.cut = 0


@pytest.fixture(scope="module")
def answered(stack: Stack) -> Iterator[Answered]:
    """At the end of the module, the ledger must hold the usage of every 200, once; beyond
    that, at most one event per cut request (the runner served it, the answer was lost on
    the way back: its GPU time was used, and is billed)."""
    answered = Answered()
    yield answered
    deadline = time.monotonic() + 60
    tenant = stack.ready["tenant_id"]
    while True:
        got = run(ledger_events(stack.ready["database_url"], tenant))
        if all(got.get(k) == v for k, v in answered.received.items()):
            break
        assert time.monotonic() < deadline, (len(got), len(answered.received))
        time.sleep(0.5)
    assert len(got) - len(answered.received) <= answered.cut, (len(got), answered.cut)


def test_each_control_plane_process_is_back_within_5_s_and_inference_goes_on(
        stack: Stack, answered: Answered) -> None:
    runners = runner_roots(stack)
    assert len(runners) == 2, runners  # the demo's, one per PoP
    back: dict[str, float] = {}
    with Load(stack) as load:
        time.sleep(1)
        for name in ("autoscaler", "registry", "metering", "billing", "api"):
            mark = load.mark()
            back[name] = kill_and_wait_back(stack, name)
            time.sleep(1)
            during = load.statuses[mark:]
            assert during and set(during) == {200}, (name, during)
        api = httpx.get(f"{stack.api}/v1/usage", headers=stack.auth(), timeout=10)
        assert api.status_code == 200, api.text

        mark = load.mark()
        back["router"] = kill_and_wait_back(stack, "router")
        while load.mark() == mark or load.statuses[-1] != 200:
            time.sleep(0.05)
        time.sleep(1)
    answered.received.update(load.received)
    # The router's clients saw its restart as a cut or a refused connection, nothing else.
    failed = [s for s in load.statuses[mark:] if s != 200]
    assert set(failed) <= {"ConnectError", "RemoteProtocolError", "ReadError"}, failed
    answered.cut += len(failed) - failed.count("ConnectError")
    assert load.statuses[-1] == 200
    # The restarted autoscaler took over the runners: none stopped, none started twice.
    time.sleep(3)
    assert runner_roots(stack) == runners
    assert "adopted runner" in stack.log.read_text()
    assert all(p["restarts"] == 1 for p in processes(stack).values()), processes(stack)
    print("\nSIGKILLed, back (ready) in: " + ", ".join(f"{k} {v:.2f} s" for k, v in back.items())
          + f"; {load.statuses.count(200)} of {len(load.statuses)} requests 200")


def test_a_killed_embedded_nats_is_back_within_5_s_and_nothing_is_lost(
        stack: Stack, answered: Answered) -> None:
    nats = next(p for p in psutil.Process(stack.process.pid).children()
                if "nats-server" in " ".join(process_cmdline(p)))
    port = int(stack.ready["nats_url"].rsplit(":", 1)[1])
    load = Load(stack)
    for _ in range(20):
        load.once()
    assert listener(port) == nats.pid
    killed_at = time.monotonic()
    nats.kill()
    while alive(nats):  # dead (a zombie counts), if not yet reaped
        time.sleep(0.01)
    while listener(port) in (None, nats.pid):  # until a new nats-server listens there
        load.once()
        assert time.monotonic() - killed_at < BACK_WITHIN_S, "nats-server was not back within 5 s"
        time.sleep(0.05)
    back_s = time.monotonic() - killed_at
    for _ in range(40):
        load.once()
        time.sleep(0.05)
    assert set(load.statuses) <= {200, 503}, load.statuses  # a 503 carries Retry-After
    assert load.statuses.count(200) >= 55, load.statuses
    restarted = [p for p in psutil.Process(stack.process.pid).children()
                 if "nats-server" in " ".join(process_cmdline(p))]
    assert restarted and restarted[0].pid != nats.pid
    assert "nats-server is gone; restarting it (restart 1)" in stack.log.read_text()
    answered.received.update(load.received)
    print(f"\nembedded nats-server SIGKILLed: back in {back_s:.2f} s; "
          f"{load.statuses.count(200)} of {len(load.statuses)} requests 200, the rest 503")


def test_a_killed_embedded_postgres_is_back_within_5_s_and_nothing_is_lost(
        stack: Stack, answered: Answered) -> None:
    pgdata = Path(stack.ready["database_url"].rsplit("host=", 1)[1])
    postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
    assert "postgres" in postmaster.name()
    with Load(stack) as load:
        time.sleep(1)
        mark = load.mark()
        killed_at = time.monotonic()
        postmaster.kill()
        # Asked while the database is down: refused with Retry-After (or, restarted already, 200).
        probe = httpx.get(f"{stack.api}/v1/usage", headers=stack.auth(), timeout=10)
        assert probe.status_code == 200 or (
            probe.status_code == 503 and probe.headers.get("retry-after")), probe.text
        while True:
            lines = (pgdata / "postmaster.pid").read_text().split("\n") \
                if (pgdata / "postmaster.pid").exists() else []
            if len(lines) > 7 and int(lines[0]) != postmaster.pid and lines[7].strip() == "ready":
                break
            assert time.monotonic() - killed_at < BACK_WITHIN_S, "PostgreSQL not back in 5 s"
            time.sleep(0.05)
        back_s = time.monotonic() - killed_at
        # The API's pool reconnects: its first queries after the restart may be refused,
        # with a 503 and Retry-After, never a 500.
        deadline = time.monotonic() + 10
        while (usage := httpx.get(f"{stack.api}/v1/usage", headers=stack.auth(),
                                  timeout=10)).status_code != 200:
            assert usage.status_code == 503 and usage.headers.get("retry-after"), usage.text
            assert time.monotonic() < deadline, "the API did not answer again"
            time.sleep(0.2)
        time.sleep(1)
    # The router needs no database: inference went on throughout.
    assert set(load.statuses[mark:]) == {200}, load.statuses[mark:]
    assert "PostgreSQL is gone; restarting it (restart 1)" in stack.log.read_text()
    answered.received.update(load.received)
    print(f"\nembedded PostgreSQL SIGKILLed: back in {back_s:.2f} s; "
          f"{load.statuses.count(200)} of {len(load.statuses)} requests 200")
