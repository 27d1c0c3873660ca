"""`edgeinfer up` keeps its embedded NATS up: SIGKILLed, nats-server is back within 5 s on
the same port and store; inference through the router keeps being answered (200, or a
503 with Retry-After — never a 500), and the usage of every 200 reaches the ledger once."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from services.registry.demo_model import sample_digit
from services.runner.supervisor import alive
from tests.e2e.conftest import Stack, ledger_events, process_cmdline, run

pytestmark = pytest.mark.e2e

STACK_ENV = {"NATS_URL": ""}  # the embedded nats-server, which `edgeinfer up` supervises


def listener(port: int) -> int | None:
    """The pid listening on `port` on loopback, if any."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def test_a_killed_embedded_nats_is_back_within_5_s_and_nothing_is_lost(
        stack: Stack, stack_database: str) -> None:
    nats = next(p for p in psutil.Process(stack.process.pid).children()
                if "nats-server" in " ".join(process_cmdline(p)))
    port = int(stack.ready["nats_url"].rsplit(":", 1)[1])
    received: dict[str, int] = {}
    statuses: list[int] = []

    def infer() -> None:
        resp = httpx.post(f"{stack.router}/v1/deployments/digits/infer", headers=stack.auth(),
                          json={"inputs": [sample_digit(1)]}, timeout=30)
        statuses.append(resp.status_code)
        if resp.status_code == 200:
            received[resp.json()["usage"]["event_id"]] = resp.json()["usage"]["gpu_us"]
        else:
            assert resp.status_code == 503 and resp.headers.get("retry-after"), resp.text

    for _ in range(20):
        infer()
    assert listener(port) == nats.pid
    killed_at = time.monotonic()
    nats.kill()
    while alive(nats):  # dead (a zombie counts), if not yet reaped
        time.sleep(0.01)
    while listener(port) in (None, nats.pid):  # until a new nats-server listens there
        infer()
        assert time.monotonic() - killed_at < 5, "nats-server was not back within 5 s"
        time.sleep(0.05)
    back_s = time.monotonic() - killed_at
    for _ in range(40):
        infer()
        time.sleep(0.05)
    assert 500 not in statuses and 502 not in statuses, statuses
    assert statuses.count(200) >= 55, statuses
    restarted = [p for p in psutil.Process(stack.process.pid).children()
                 if "nats-server" in " ".join(process_cmdline(p))]
    assert restarted and restarted[0].pid != nats.pid
    assert "restarting it (restart 1)" in stack.log.read_text()

    deadline = time.monotonic() + 60
    while (got := run(ledger_events(stack_database, stack.ready["tenant_id"]))) != received:
        assert time.monotonic() < deadline, (len(got), len(received))
        time.sleep(0.5)
    print(f"\nembedded nats-server SIGKILLed: back in {back_s:.2f} s; "
          f"{statuses.count(200)} of {len(statuses)} requests 200, the rest 503")
