"""The whole path, as a user drives it: `edgeinfer up`, then HTTP.

Runs the real console script on its embedded NATS (a user per service) and the session's
PostgreSQL (real migrations), with real BentoML runner processes in two simulated PoPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import nats
import psutil
import pytest

from edgeinfer.services.registry.demo_model import sample_digit
from edgeinfer.shared.bus import connect
from edgeinfer.shared.events import UsageBatch, UsageEvent, usage_message_decoder
from edgeinfer.shared.nats_permissions import with_user
from edgeinfer.shared.subjects import Subjects
from tests.e2e.conftest import Stack, process_cmdline, process_env
from tests.metrics_lint import lint_problems

pytestmark = pytest.mark.e2e


def infer(stack: Stack, region: str = "eu", key: str | None = None,
          body: Any = None, deployment: str = "digits") -> httpx.Response:
    payload = body if body is not None else {"inputs": [sample_digit(0), sample_digit(1)]}
    resp = httpx.post(f"{stack.router}/v1/deployments/{deployment}/infer",
                      headers={**stack.auth(key), "X-Client-Region": region}, json=payload,
                      timeout=30)
    stack.served += resp.status_code == 200 and key is None
    return resp


async def ledger_totals(database_url: str, tenant_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(gpu_us), 0) AS us"
                                  " FROM metering.usage_events WHERE tenant_id = $1", tenant_id)
        return int(row["n"]), int(row["us"])
    finally:
        await conn.close()


async def ainfer(stack: Stack, region: str, key: str | None = None, body: Any = None,
                 deployment: str = "digits") -> httpx.Response:
    payload = body if body is not None else {"inputs": [sample_digit(0), sample_digit(1)]}
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(f"{stack.router}/v1/deployments/{deployment}/infer",
                               headers={**stack.auth(key), "X-Client-Region": region},
                               json=payload)
    stack.served += resp.status_code == 200 and key is None
    return resp


async def wait_for_usage(stack: Stack, total_us: int, timeout_s: float = 15) -> dict[str, Any]:
    """Until the ledger holds `total_us` and all of it is settled as delivered (billable:
    the routers' confirmations trail the runners' usage by about a second)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            usage = (await http.get(f"{stack.api}/v1/usage", headers=stack.auth())).json()
            if usage["total_delivered_gpu_us"] >= total_us or time.monotonic() > deadline:
                return usage
            await asyncio.sleep(0.2)


async def test_gpu_seconds_in_ledger_equal_what_runners_measured(stack: Stack,
                                                                 stack_database: str) -> None:
    # Prices high enough that a few milliseconds of GPU time cost whole cents (at the demo's
    # list prices every amount here would round to 0.00 and prove nothing): from the start
    # of this hour, since rating prices each hour at the price in effect when it began.
    prices = {"eu-west": Fraction(50), "us-east": Fraction(45)}  # USD per GPU-second
    async with price_override(stack_database, prices):
        measured: dict[str, int] = {"eu-west": 0, "us-east": 0}
        for i in range(30):
            region = "eu" if i % 3 else "us"
            resp = await ainfer(stack, region)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            assert body["outputs"]["labels"] == [0, 1]  # the model really ran
            assert int(resp.headers["x-edgeinfer-gpu-us"]) == body["usage"]["gpu_us"]
            measured[body["usage"]["pop"]] += body["usage"]["gpu_us"]
        total = sum(measured.values())
        assert total > 0

        usage = await wait_for_usage(stack, total)
        assert usage["total_gpu_us"] == total
        by_pop = {item["pop"]: item["gpu_us"] for item in usage["items"]}
        assert by_pop == measured
        assert sum(item["requests"] for item in usage["items"]) == 30
        assert await ledger_totals(stack_database, stack.ready["tenant_id"]) == (30, total)

        async with httpx.AsyncClient() as http:
            preview = (await http.get(f"{stack.api}/v1/invoices/preview",
                                      headers=stack.auth())).json()
    # By hand: µs × USD/s ÷ 10⁶ is the exact amount; round() of a Fraction is half-even;
    # in cents.
    expected = {pop: Decimal(round(Fraction(gpu_us) * prices[pop] / 10**6 * 100)) / 100
                for pop, gpu_us in measured.items()}
    assert all(amount > 0 for amount in expected.values()), expected
    assert {line["region"]: Decimal(line["amount"]) for line in preview["lines"]} == expected
    assert Decimal(preview["totals"]["USD"]) == sum(expected.values())


@contextlib.asynccontextmanager
async def price_override(database_url: str, prices: dict[str, Fraction]) -> AsyncIterator[None]:
    """The `cpu` class priced at `prices` from the start of this hour, removed afterwards
    (later tests see the list prices again)."""
    conn = await asyncpg.connect(database_url)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    try:
        for region, price in prices.items():
            await conn.execute("INSERT INTO billing.price_book (gpu_class, region, currency,"
                               " unit_price, effective_from) VALUES ('cpu', $1, 'USD', $2, $3)",
                               region, Decimal(price.numerator) / price.denominator, hour)
        yield
    finally:
        await conn.execute("DELETE FROM billing.price_book WHERE gpu_class = 'cpu' AND"
                           " effective_from = $1", hour)
        await conn.close()


@pytest.mark.parametrize(("region", "pop"), [("eu", "eu-west"), ("us", "us-east")])
def test_nearest_pop_serves(stack: Stack, region: str, pop: str) -> None:
    resp = infer(stack, region)
    assert resp.status_code == 200
    assert resp.headers["x-edgeinfer-pop"] == pop


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        pytest.param({"key": "ei_not-a-key"}, 401, "invalid_api_key", id="wrong-key"),
        pytest.param({"deployment": "nope"}, 404, "deployment_not_found", id="unknown-deployment"),
        pytest.param({"body": {"inputs": [[1.0, 2.0]]}}, 400, "invalid_input", id="wrong-shape"),
        pytest.param({"body": {"inputs": "seven"}}, 400, "invalid_body", id="malformed-body"),
        pytest.param({"body": {"inputs": [], "extra": 1}}, 400, "invalid_body", id="unknown-field"),
        pytest.param({"body": {"inputs": []}}, 400, "invalid_input", id="no-rows"),
    ],
)
async def test_bad_input_gets_a_4xx_with_a_reason_and_is_not_charged(
        stack: Stack, stack_database: str, kwargs: dict[str, Any], status: int, code: str) -> None:
    deadline = time.monotonic() + 15
    while (before := await ledger_totals(stack_database, stack.ready["tenant_id"]))[0] < stack.served:
        assert time.monotonic() < deadline, "earlier usage never reached the ledger"
        await asyncio.sleep(0.1)
    resp = await ainfer(stack, "eu", **kwargs)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["message"]
    await asyncio.sleep(1.0)  # give a wrongly emitted usage event time to land
    assert await ledger_totals(stack_database, stack.ready["tenant_id"]) == before


def test_missing_key_is_refused(stack: Stack) -> None:
    resp = httpx.post(f"{stack.router}/v1/deployments/digits/infer", json={"inputs": []})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "missing_api_key"
    resp = httpx.get(f"{stack.api}/v1/usage")
    assert resp.status_code == 401


def test_a_second_tenant_sees_none_of_the_first_tenants_data(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {stack.ready['admin_token']}"}
    tenant = httpx.post(f"{stack.api}/admin/tenants", json={"name": "other"}, headers=admin)
    assert tenant.status_code == 201, tenant.text
    issued = httpx.post(f"{stack.api}/admin/tenants/{tenant.json()['id']}/keys", json={},
                        headers=admin)
    assert issued.status_code == 201
    other = issued.json()["key"]

    usage = httpx.get(f"{stack.api}/v1/usage", headers=stack.auth(other)).json()
    assert usage["items"] == [] and usage["total_gpu_us"] == 0
    assert httpx.get(f"{stack.api}/v1/deployments", headers=stack.auth(other)).json() == []
    assert httpx.get(f"{stack.api}/v1/deployments/digits",
                     headers=stack.auth(other)).status_code == 404
    preview = httpx.get(f"{stack.api}/v1/invoices/preview", headers=stack.auth(other)).json()
    assert preview["lines"] == []
    resp = infer(stack, key=other)
    assert resp.status_code == 404
    assert stack.ready["deployment_id"] not in resp.text


@pytest.mark.parametrize("method, where, path, body", [
    ("POST", "api", "/admin/tenants", '{"name": "a\\u0000b"}'),
    ("POST", "api", "/admin/tenants", '{"name": "a\\ud800b"}'),  # a lone surrogate
    ("GET", "api", "/v1/deployments/x%00", None),
    ("GET", "api", "/v1/invoices/inv%00", None),
    ("GET", "api", "/v1/usage?from=2026-01%00", None),
    ("POST", "router", "/v1/deployments/digits%00/infer", '{"inputs": []}'),
])
def test_text_postgresql_cannot_store_is_a_400_with_the_reason(
        stack: Stack, method: str, where: str, path: str, body: str | None) -> None:
    """NUL and lone surrogates are refused at the door: before, each was a 500 (PostgreSQL
    refuses them), and the router waited 2 s for a registry that had crashed on it."""
    admin = {"Authorization": f"Bearer {stack.ready['admin_token']}"}
    base, headers = (stack.api, admin) if path.startswith("/admin") else (
        stack.api if where == "api" else stack.router, stack.auth())
    started = time.monotonic()
    resp = httpx.request(method, base + path, content=body, timeout=10,
                         headers={**headers, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "invalid_text", resp.text
    assert time.monotonic() - started < 1


async def test_a_retried_post_with_an_idempotency_key_acts_once(
        stack: Stack, stack_database: str) -> None:
    """A retried `POST …/credits` used to grant twice. With the same Idempotency-Key a retry
    gets the first answer (replayed), another request under the key is a 422, and even a
    retry whose first answer was lost entirely (the key's record gone) grants once."""
    admin = {"Authorization": f"Bearer {stack.ready['admin_token']}"}
    async with httpx.AsyncClient(base_url=stack.api, headers=admin, timeout=30) as http:
        tenant = (await http.post("/admin/tenants", json={"name": "idem"},
                                  headers={"Idempotency-Key": "t-1"})).json()
        again = await http.post("/admin/tenants", json={"name": "idem"},
                                headers={"Idempotency-Key": "t-1"})
        assert again.json() == tenant and again.headers["idempotent-replayed"] == "true"
        credits = f"/admin/tenants/{tenant['id']}/credits"
        grant = {"amount": "5.00", "currency": "USD", "reason": "goodwill"}
        first = await http.post(credits, json=grant, headers={"Idempotency-Key": "c-1"})
        assert first.status_code == 201, first.text
        retried = await http.post(credits, json=grant, headers={"Idempotency-Key": "c-1"})
        assert (retried.status_code, retried.json()) == (201, first.json())
        other = await http.post(credits, json={**grant, "amount": "50.00"},
                                headers={"Idempotency-Key": "c-1"})
        assert other.status_code == 422, other.text
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        # The first answer lost with its record (a crash after the grant committed):
        conn = await asyncpg.connect(stack_database)
        try:
            await conn.execute("DELETE FROM accounts.idempotency_keys WHERE key = 'c-1'")
            after_loss = await http.post(credits, json=grant, headers={"Idempotency-Key": "c-1"})
            assert after_loss.json()["id"] == first.json()["id"]
            grants = await conn.fetchval("SELECT count(*) FROM billing.credit_grants"
                                         " WHERE tenant_id = $1", tenant["id"])
        finally:
            await conn.close()
        assert grants == 1
        bad = await http.post(credits, json=grant, headers={"Idempotency-Key": "x" * 300})
        assert bad.status_code == 400


async def test_a_retried_inference_with_an_idempotency_key_runs_and_bills_once(
        stack: Stack, stack_database: str) -> None:
    """The same Idempotency-Key on inference: the retry gets the first answer (replayed,
    not run again), one usage event, one delivery; another body under it is a 422."""
    body = {"inputs": [sample_digit(4)]}
    key = {**stack.auth(), "Idempotency-Key": "infer-" + os.urandom(4).hex()}
    async with httpx.AsyncClient(base_url=stack.router, timeout=30) as http:
        first = await http.post("/v1/deployments/digits/infer", json=body, headers=key)
        assert first.status_code == 200, first.text
        retries = [await http.post("/v1/deployments/digits/infer", json=body, headers=key)
                   for _ in range(3)]
        other = await http.post("/v1/deployments/digits/infer", headers=key,
                                json={"inputs": [sample_digit(5)]})
    stack.served += 1
    assert all(r.status_code == 200 and r.content == first.content for r in retries)
    assert all(r.headers["idempotent-replayed"] == "true" for r in retries)
    assert retries[0].headers["x-request-id"] == first.headers["x-request-id"]
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    request_id = first.json()["request_id"]
    conn = await asyncpg.connect(stack_database)
    try:
        for _ in range(100):  # the runner's outbox and the settlement take a moment
            rows = await conn.fetch("SELECT outcome FROM metering.usage_events"
                                    " WHERE request_id = $1", request_id)
            if rows and rows[0]["outcome"] == "delivered":
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    assert [r["outcome"] for r in rows] == ["delivered"]


def test_admin_routes_refuse_tenant_keys(stack: Stack) -> None:
    resp = httpx.get(f"{stack.api}/admin/tenants", headers=stack.auth())
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "admin_unauthenticated"


async def test_runner_counters_conserve_and_match_the_ledger(stack: Stack, stack_database: str) -> None:
    """Each runner's /metrics: charged == busy × share (share 1 here) and busy ≤ wall × share;
    and what all runners charged equals the tenant's ledger, to the microsecond."""
    urls = {env["EDGEINFER_RUNNER_URL"]
            for p in psutil.Process(stack.process.pid).children(recursive=True)
            if "EDGEINFER_RUNNER_URL" in (env := process_env(p))}
    assert len(urls) == 2
    await asyncio.sleep(1.5)  # a heartbeat refreshes the wall-time gauge
    charged_total = 0
    async with httpx.AsyncClient() as http:
        for url in urls:
            text = (await http.get(f"{url}/metrics")).text
            busy = _metric(text, "edgeinfer_runner_busy_device_seconds_total")
            charged = _metric(text, "edgeinfer_runner_charged_device_seconds_total")
            wall = _metric(text, "edgeinfer_runner_wall_share_seconds")
            assert charged == busy > 0
            assert busy <= wall
            charged_total += round(charged * 1e6)  # seconds on /metrics, exact to the µs
    deadline = time.monotonic() + 15
    while (ledger := await ledger_totals(stack_database, stack.ready["tenant_id"]))[0] < stack.served:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert ledger[1] == charged_total

    async with httpx.AsyncClient() as http:
        report = (await http.get(f"{stack.api}/admin/reconciliation", headers={
            "Authorization": f"Bearer {stack.ready['admin_token']}"})).json()
    assert report["alerts"] == 0
    assert len(report["runners"]) == 2
    assert all(r["difference_us"] == 0 and r["ledger_us"] > 0 for r in report["runners"])



def _metric(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    assert values, f"{name} missing from /metrics"
    return sum(values)


async def test_a_clients_trace_reaches_the_runner_and_its_usage_event(stack: Stack) -> None:
    """W3C `traceparent`: the router continues the client's trace (a new span per hop) and
    the runner writes its trace id into the request's usage event."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    events: list[UsageEvent] = []

    async def on_usage(msg: Any) -> None:
        decoded = usage_message_decoder.decode(msg.data)
        events.extend(decoded.events if isinstance(decoded, UsageBatch) else [decoded])

    nc = await connect(stack.ready["nats_url"], "test-trace")
    try:
        await nc.subscribe(Subjects(stack.ready["namespace"]).usage_wildcard, cb=on_usage)
        await nc.flush()
        async with httpx.AsyncClient(timeout=30) as http:
            traced = await http.post(
                f"{stack.router}/v1/deployments/digits/infer", json={"inputs": [sample_digit(4)]},
                headers={**stack.auth(), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
            untraced = await ainfer(stack, "eu")
        stack.served += traced.status_code == 200
        assert traced.status_code == 200 and untraced.status_code == 200, traced.text
        ids = {traced.json()["usage"]["event_id"]: trace_id,
               untraced.json()["usage"]["event_id"]: None}
        deadline = time.monotonic() + 10
        while not ids.keys() <= {e.id for e in events}:
            assert time.monotonic() < deadline, "the usage events never came"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    by_id = {e.id: e.trace_id for e in events}
    traced_event, untraced_event = list(ids)
    assert by_id[traced_event] == trace_id
    assert len(by_id[untraced_event]) == 32 and by_id[untraced_event] != trace_id  # one started


async def test_every_metrics_endpoint_passes_promtools_lint(stack: Stack) -> None:
    """The API's, the router's and each runner's /metrics follow Prometheus's naming rules
    (base units, counter suffixes): `promtool check metrics` finds nothing."""
    runners = {env["EDGEINFER_RUNNER_URL"]
               for p in psutil.Process(stack.process.pid).children(recursive=True)
               if "EDGEINFER_RUNNER_URL" in (env := process_env(p))}
    async with httpx.AsyncClient(timeout=10) as http:
        for url in [stack.api, stack.router, *runners]:
            text = (await http.get(f"{url}/metrics")).text
            assert "edgeinfer_" in text, url
            assert await asyncio.to_thread(lint_problems, text) == "", url


def test_secrets_are_files_only_their_owner_reads_and_never_logged(stack: Stack) -> None:
    state = Path(stack.ready["processes"]).parent
    for name in ("ready.json", "admin-token", "portal-secret", "demo-api-key",
                 "nats-credentials.json", "nats-server.conf"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
    # stdout here is a file, not a terminal: the banner names where the secrets are instead.
    logged = stack.log.read_text()
    assert "edgeinfer is up" in logged
    assert stack.key not in logged and stack.ready["admin_token"] not in logged
    passwords = json.loads((state / "nats-credentials.json").read_text())
    assert not any(password in logged for password in passwords.values())
    assert f"$(cat {state.resolve() / 'demo-api-key'})" in logged


async def test_each_process_logs_in_to_nats_as_its_own_user_with_only_its_rights(
        stack: Stack) -> None:
    """`edgeinfer up`'s NATS knows a user per service and per PoP's runners
    (shared/nats_permissions.py): a process without a password is refused, each service
    and runner holds its own user's URL, the services' real work over this test module
    met no refusal, and a runner's user may not bill another PoP."""
    state = Path(stack.ready["processes"]).parent
    passwords = json.loads((state / "nats-credentials.json").read_text())
    server = urlsplit(stack.ready["nats_url"])
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(f"nats://{server.hostname}:{server.port}", allow_reconnect=False,
                           connect_timeout=2)

    users: dict[str, str] = {}
    for p in psutil.Process(stack.process.pid).children(recursive=True):
        cmdline, url = " ".join(process_cmdline(p)), process_env(p).get("NATS_URL", "")
        if "bentoml" in cmdline:
            users[f"runner of {process_env(p)['EDGEINFER_POP']}"] = urlsplit(url).username or ""
        elif "edgeinfer.services.launcher.cli run" in cmdline:
            users[cmdline.rsplit(" ", 1)[1]] = urlsplit(url).username or ""
    assert users == {"api": "api", "registry": "registry", "metering": "metering",
                     "billing": "billing", "router": "router", "autoscaler": "autoscaler",
                     "runner of eu-west": "runner-eu-west", "runner of us-east": "runner-us-east"}

    logs = [stack.log, *(state / "logs").glob("*.log")]
    refusals = [line for log in logs for line in log.read_text().splitlines()
                if "violation" in line.lower()]
    assert not refusals, refusals[:5]

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    runner = await connect(with_user(stack.ready["nats_url"], "runner-eu-west",
                                     passwords["runner-eu-west"]), "test-runner", error_cb=on_error)
    try:
        subject = Subjects(stack.ready["namespace"]).usage("us-east")
        await runner.publish(subject, b"{}")
        await runner.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.02)
        assert errors and "permissions violation" in errors[0].lower(), errors
    finally:
        await runner.close()


def test_ctrl_c_stops_everything_and_leaves_no_process(stack: Stack) -> None:
    root = psutil.Process(stack.process.pid)
    tree = root.children(recursive=True)
    assert any("bentoml" in " ".join(process_cmdline(p)) for p in tree), "runners were not started"
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(timeout=90) == 0, stack.log.read_text()[-3000:]
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == [], f"left behind: {[process_cmdline(p) for p in alive]}"
