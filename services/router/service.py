"""The router: the front door of every inference request.

Per request: authenticate the key (shared/tenancy.py, cached, revocations pushed over
NATS), admit (suspension 403, budget hard stop 402, concurrency and rate limits 429),
resolve the deployment (registry over NATS, cached), pick a replica with the pure policy
(policy.py) over the table built from runner heartbeats (table.py), and forward.

- A replica that refuses the connection (or answers 503 before taking the request: it is
  draining) never started it, so the router retries once on the next best — or, with none
  ready, holds it as below. A replica that fails after
  taking the request is not retried (the model may not be idempotent): 502, not charged.
- No replica ready in any allowed PoP: publish a demand signal (the autoscaler's wake-up)
  and hold the request until a replica's first ready heartbeat or the tenant's
  X-Scale-Up-Timeout; held requests resume in arrival order.
- Every allowed replica full: 503 + Retry-After. Never a PoP outside the residency rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from litestar import Litestar, Request, Response, get, post
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.router.admission import Bucket, retry_after_header, take
from services.router.config import RouterConfig
from services.router.location import client_region
from services.router.metrics import RouterMetrics
from services.router.policy import ReplicaView, Route, choose, order_pops
from services.router.table import RoutingTable
from shared.bus import decode_or_warn
from shared.bus import request as nats_request
from shared.events import (
    DemandSignal,
    Deployment,
    KeyRevoked,
    ResolveDeploymentReply,
    ResolveDeploymentRequest,
    accounts_event_decoder,
    budget_decoder,
    encode,
    heartbeat_decoder,
    new_id,
)
from shared.http import EXCEPTION_HANDLERS, Refusal
from shared.subjects import Subjects
from shared.tenancy import KeyResolver, Tenant

log = logging.getLogger(__name__)


class RowsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inputs: list[list[float]]


class TextsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inputs: list[str]


# The body's shape by the deployment's framework, checked before a runner is chosen (the
# runner still checks the model's own schema: feature count, lengths).
_infer_decoders: dict[str, tuple[msgspec.json.Decoder[Any], str]] = {
    "onnx": (msgspec.json.Decoder(RowsRequest), '{"inputs": [[number, ...], ...]}'),
    "sentence-embedding": (msgspec.json.Decoder(TextsRequest), '{"inputs": ["text", ...]}'),
}


class _Usage(msgspec.Struct):
    gpu_us: int


class _RunnerAnswer(msgspec.Struct):
    """The part of a runner's answer the router reads; the rest passes through untouched."""

    usage: _Usage


_answer_decoder = msgspec.json.Decoder(_RunnerAnswer)


class _NotStarted(Exception):
    """The replica did not take the request (refused connection, or not ready): safe to retry."""


class _Upstream:
    """What one forwarded attempt returned, and how long the runner took."""

    def __init__(self, status: int, data: bytes, seconds: float) -> None:
        self.status = status
        self.data = data
        self.seconds = seconds


class RouterService:
    def __init__(self, nc: NATS, subjects: Subjects, config: RouterConfig) -> None:
        self._nc = nc
        self._subjects = subjects
        self._config = config
        self.table = RoutingTable()
        self.keys = KeyResolver(nc, subjects)
        self.metrics = RouterMetrics()
        self._deployments: dict[tuple[str, str], tuple[float, Deployment | None]] = {}
        self._buckets: dict[str, Bucket] = {}
        self._tenant_in_flight: dict[str, int] = defaultdict(int)
        self._budget_blocked: dict[str, str] = {}
        self._held: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._random = random.Random()
        self._activity_sent: dict[tuple[str, str], float] = {}
        # Requests served since the last activity signal, per (deployment, PoP).
        self._served: dict[tuple[str, str], int] = defaultdict(int)
        # Demand the replicas could not take: refusals at capacity since the last report,
        # and each deployment's mean time per request (EWMA), to turn them into concurrency.
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}
        self._service_s: dict[str, float] = {}
        self._pop_orders: dict[tuple[str, tuple[str, ...]], list[tuple[str, float]]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self._config.forward_timeout_s))
        s = self._subjects
        await self._nc.subscribe(s.heartbeat_wildcard, cb=self._on_heartbeat)
        await self._nc.subscribe(s.key_revoked, cb=self._on_accounts_event)
        await self._nc.subscribe(s.tenant_changed, cb=self._on_accounts_event)
        await self._nc.subscribe(s.budget_wildcard, cb=self._on_budget)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    # --- events ----------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is None:
            return
        self.table.observe(beat, time.monotonic())
        if beat.state == "ready":
            # Futures resume in the order they were created: held requests keep arrival order.
            for future in self._held.pop(beat.deployment_id, []):
                if not future.done():
                    future.set_result(None)

    async def _on_accounts_event(self, msg: Msg) -> None:
        event = decode_or_warn(accounts_event_decoder, msg)
        if event is None:
            return
        if isinstance(event, KeyRevoked):
            self.keys.forget_key_hash(event.key_hash)
        else:
            self.keys.forget_tenant(event.tenant_id)
            self._buckets.pop(event.tenant_id, None)

    async def _on_budget(self, msg: Msg) -> None:
        state = decode_or_warn(budget_decoder, msg)
        if state is None:
            return
        if state.blocked:
            self._budget_blocked[state.tenant_id] = state.reason
        else:
            self._budget_blocked.pop(state.tenant_id, None)

    # --- the request path ------------------------------------------------------------------

    async def deployment(self, tenant_id: str, name: str) -> Deployment | None:
        key = (tenant_id, name)
        now = time.monotonic()
        cached = self._deployments.get(key)
        if cached is not None and now - cached[0] < self._config.deployment_cache_s:
            return cached[1]
        reply = await nats_request(self._nc, self._subjects.resolve_deployment,
                                   ResolveDeploymentRequest(tenant_id=tenant_id, name=name),
                                   ResolveDeploymentReply)
        self._deployments[key] = (now, reply.deployment)
        return reply.deployment

    def admit(self, tenant: Tenant, now: float) -> None:
        """Budget, concurrency and rate limits, in that order; raises the refusal."""
        reason = self._budget_blocked.get(tenant.id)
        if reason is not None:
            raise Refusal(402, "budget_exceeded",
                          f"your spend limit stops new requests ({reason or 'limit reached'});"
                          " raise the limit or wait for the next period")
        limits = tenant.limits
        if self._tenant_in_flight[tenant.id] >= limits.max_concurrency:
            raise Refusal(429, "concurrency_limited",
                          f"at most {limits.max_concurrency} requests in flight per tenant",
                          headers={"Retry-After": "1"})
        bucket = self._buckets.get(tenant.id)
        if bucket is None or bucket.rate != limits.rate_limit_rps:
            bucket = Bucket.full(limits.rate_limit_rps, limits.rate_limit_burst, now)
        bucket, wait = take(bucket, now)
        self._buckets[tenant.id] = bucket
        if wait > 0:
            raise Refusal(429, "rate_limited",
                          f"over {limits.rate_limit_rps:g} requests/s (burst "
                          f"{limits.rate_limit_burst})", headers={"Retry-After": retry_after_header(wait)})

    def _pop_order(self, region: str, allowed_pops: list[str]) -> list[tuple[str, float]]:
        key = (region, tuple(allowed_pops))
        ordered = self._pop_orders.get(key)
        if ordered is None:
            if len(self._pop_orders) > 10_000:
                self._pop_orders.clear()
            ordered = order_pops(allowed_pops, self._config.latency_ms.get(region, {}))
            self._pop_orders[key] = ordered
        return ordered

    def _scale_up_timeout(self, request: Request[Any, Any, Any]) -> float:
        raw = request.headers.get("x-scale-up-timeout")
        if raw is None:
            return self._config.scale_up_timeout_s
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0 <= value <= self._config.max_scale_up_timeout_s:
            raise Refusal(400, "invalid_scale_up_timeout",
                          f"X-Scale-Up-Timeout is seconds in [0; {self._config.max_scale_up_timeout_s:g}]")
        return value

    async def infer(self, request: Request[Any, Any, Any], name: str) -> Response[Any]:
        started = time.perf_counter()
        deployment_label, pop_label = "", ""
        try:
            tenant = await self.keys.tenant_from_header(request.headers.get("authorization"))
            self.admit(tenant, time.monotonic())
            self._tenant_in_flight[tenant.id] += 1
            try:
                deployment = await self.deployment(tenant.id, name)
                if deployment is None:
                    raise Refusal(404, "deployment_not_found", f"no deployment named {name!r}")
                deployment_label = deployment.id
                response, pop_label, outside_s = await self._serve(request, tenant, deployment)
            finally:
                self._tenant_in_flight[tenant.id] -= 1
        except Refusal as refusal:
            self.metrics.outcome(deployment_label, pop_label, refusal.code)
            raise
        total = time.perf_counter() - started
        self.metrics.outcome(deployment_label, pop_label, "ok")
        self.metrics.served(deployment_label, pop_label, total)
        self.metrics.overhead.observe(max(0.0, total - outside_s))
        return response

    async def _serve(self, request: Request[Any, Any, Any], tenant: Tenant,
                     deployment: Deployment) -> tuple[Response[Any], str, float]:
        body = await request.body()
        decoder, shape = _infer_decoders.get(deployment.framework, _infer_decoders["onnx"])
        try:
            payload = decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Refusal(400, "invalid_body", f"expected JSON {shape}: {exc}") from None
        scale_up_timeout = self._scale_up_timeout(request)
        region = client_region(request.headers.get(self._config.client_region_header),
                               request.client.host if request.client else None,
                               self._config.client_prefixes, self._config.default_client_region)
        ordered = self._pop_order(region, deployment.allowed_pops)
        request_id = new_id()
        forward = encode({"tenant_id": tenant.id, "request_id": request_id,
                          "deployment_id": deployment.id, "inputs": payload.inputs})
        tried: set[str] = set()
        waited_s = 0.0
        held = False
        deadline: float | None = None
        attempts = 0
        while True:
            route = choose(ordered, self.table.by_pop(deployment.id, time.monotonic()),
                           self._random.randrange, frozenset(tried))
            if isinstance(route, Route):
                # Counted once per request, at its first attempt: one refused by a draining
                # replica and sent again is still one request served.
                await self._note_activity(deployment.id, route.replica.pop,
                                          requests=1 if attempts == 0 else 0)
                attempts += 1
                try:
                    upstream = await self._forward(deployment.id, route.replica, forward)
                except _NotStarted:
                    tried.add(route.replica.runner_id)
                    self.table.mark_down(deployment.id, route.replica.runner_id)
                    if attempts >= 2:
                        raise Refusal(503, "no_replica_available",
                                      "the replicas tried did not accept the request; retry"
                                      " shortly", headers={"Retry-After": "1"}) from None
                    continue
                mean = self._service_s.get(deployment.id, upstream.seconds)
                self._service_s[deployment.id] = 0.8 * mean + 0.2 * upstream.seconds
                response = self._answer(upstream, request_id, route.replica, held, waited_s)
                return response, route.replica.pop, upstream.seconds + waited_s
            # A replica that refused (draining, or gone) and no other ready: the same as cold
            # — hold the request and wake the deployment — unless the rest are full.
            if route.reason == "saturated":
                await self._note_saturation(deployment.id, ordered[0][0] if ordered else "")
                raise Refusal(503, "saturated",
                              "every replica in the deployment's allowed PoPs "
                              f"({', '.join(deployment.allowed_pops)}) is at capacity",
                              headers={"Retry-After": str(route.retry_after_s)})
            # Cold: nothing ready anywhere allowed. Wake the deployment and hold.
            now = time.monotonic()
            if deadline is None:
                deadline = now + scale_up_timeout
                held = True
            remaining = deadline - now
            nearest = ordered[0][0] if ordered else ""
            if remaining <= 0:
                await self._signal_demand(deployment.id, nearest)
                raise Refusal(503, "cold_start_timeout",
                              f"no replica became ready within {scale_up_timeout:g} s "
                              f"in {', '.join(deployment.allowed_pops)}; scale-up continues",
                              headers={"Retry-After": "5"})
            waited_s += await self._hold(deployment.id, nearest, min(remaining, 2.0))

    async def _hold(self, deployment_id: str, pop: str, timeout_s: float) -> float:
        """Signal demand, wait for a ready heartbeat (or the timeout); returns seconds waited."""
        await self._signal_demand(deployment_id, pop)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held[deployment_id].append(future)
        gauge = self.metrics.held.labels(deployment_id, pop)
        gauge.inc()
        t0 = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
        finally:
            gauge.dec()
            waiters = self._held.get(deployment_id)
            if waiters and future in waiters:
                waiters.remove(future)
        waited = time.monotonic() - t0
        self.metrics.cold_start_wait.labels(deployment_id).observe(waited)
        return waited

    async def _note_activity(self, deployment_id: str, pop: str, requests: int = 1) -> None:
        """Tell the autoscaler the deployment is in use in this PoP, at most once a second:
        without it a deployment that scales to zero would be stopped while serving."""
        now = time.monotonic()
        key = (deployment_id, pop)
        self._served[key] += requests
        if now - self._activity_sent.get(key, float("-inf")) >= 1.0:
            self._activity_sent[key] = now
            await self._signal_demand(deployment_id, pop, held=0, served=self._served.pop(key))

    async def _note_saturation(self, deployment_id: str, pop: str) -> None:
        """Requests refused because every replica was full are load the autoscaler cannot
        see in in-flight counts (they never got a slot). Report them at most once a second
        as the concurrency they would have added: refused per second × mean request time."""
        now = time.monotonic()
        key = (deployment_id, pop)
        self.metrics.refused_seconds.labels(deployment_id, pop).inc(
            self._service_s.get(deployment_id, 0.1))
        since, refused = self._refused.get(key, (now, 0))
        refused += 1
        if now - since < 1.0:
            self._refused[key] = (since, refused)
            return
        self._refused[key] = (now, 0)
        excess = refused / max(now - since, 1.0) * self._service_s.get(deployment_id, 0.1)
        await self._signal_demand(deployment_id, pop, held=0, excess=excess)

    async def _signal_demand(self, deployment_id: str, pop: str, held: int | None = None,
                             excess: float = 0.0, served: int = 0) -> None:
        await self._nc.publish(self._subjects.demand(deployment_id), encode(DemandSignal(
            id=new_id(), source="router", time=datetime.now(UTC), deployment_id=deployment_id,
            held_requests=len(self._held[deployment_id]) + 1 if held is None else held,
            pop=pop, excess_concurrency=round(excess, 3), requests=served)))

    async def _forward(self, deployment_id: str, replica: ReplicaView, body: bytes) -> _Upstream:
        assert self._http is not None
        self.table.outstanding[replica.runner_id] += 1
        gauge = self.metrics.in_flight.labels(deployment_id, replica.pop)
        gauge.inc()
        t0 = time.perf_counter()
        try:
            async with self._http.post(replica.url + "/infer", data=body,
                                       headers={"content-type": "application/json"}) as resp:
                data = await resp.read()
                if resp.status == 503:
                    raise _NotStarted()
                return _Upstream(resp.status, data, time.perf_counter() - t0)
        except aiohttp.ClientConnectorError:
            raise _NotStarted() from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Refusal(502, "runner_failed",
                          f"the replica failed while serving the request ({type(exc).__name__});"
                          " it was not retried because it may have run, and it is not charged"
                          ) from None
        finally:
            gauge.dec()
            self.table.outstanding[replica.runner_id] -= 1

    def _answer(self, upstream: _Upstream, request_id: str, replica: ReplicaView, held: bool,
                waited_s: float) -> Response[Any]:
        headers = {"x-request-id": request_id, "x-edgeinfer-pop": replica.pop,
                   "x-edgeinfer-cold-start": "true" if held else "false",
                   "x-edgeinfer-cold-start-wait-ms": str(round(waited_s * 1000))}
        if upstream.status == 200:
            try:
                answer = _answer_decoder.decode(upstream.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise Refusal(502, "runner_error", "the replica's answer was malformed") from None
            headers["x-edgeinfer-gpu-us"] = str(answer.usage.gpu_us)
            # Pass the runner's JSON object through, with our request id spliced in front:
            # decoding and re-encoding the outputs would cost more than the rest of the hop.
            body = b'{"request_id":"' + request_id.encode() + b'",' + upstream.data.lstrip()[1:]
            return Response(body, status_code=200, headers=headers, media_type="application/json")
        if 400 <= upstream.status < 500:
            raise Refusal(400, "invalid_input", _runner_error_message(upstream.data))
        raise Refusal(502, "runner_error", f"the replica answered {upstream.status}; not charged")

    def app(self) -> Litestar:
        service = self

        @post("/v1/deployments/{name:str}/infer", operation_id="infer",
              request_max_body_size=self._config.max_body_bytes)
        async def infer(request: Request[Any, Any, Any], name: str) -> Response[Any]:
            return await service.infer(request, name)

        @get("/healthz", operation_id="router_health")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @get("/metrics", operation_id="router_metrics", media_type=CONTENT_TYPE_LATEST)
        async def metrics() -> bytes:
            return generate_latest(service.metrics.registry)

        return Litestar(route_handlers=[infer, healthz, metrics],
                        exception_handlers=EXCEPTION_HANDLERS, openapi_config=None)


def _runner_error_message(data: bytes) -> str:
    """BentoML answers `[{"error": "..."}]` or `{"error": "..."}`: keep only the sentence."""
    try:
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode(errors="replace")[:500]
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])[:500]
    return str(parsed)[:500]
