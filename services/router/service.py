"""The router: the front door of every inference request.

Per request: authenticate the key (shared/tenancy.py, cached, revocations pushed over
NATS), admit (suspension 403, budget hard stop 402, concurrency and rate limits 429),
resolve the deployment (registry over NATS, cached), pick a replica with the pure policy
(policy.py) over the table built from runner heartbeats (table.py), and forward.

- A replica that refuses the connection (or answers 503 before taking the request: it is
  draining) never started it, so the router retries once on the next best — or, with none
  ready, holds it as below. A replica that fails after
  taking the request is not retried (the model may not be idempotent): 502, not billed
  (never confirmed as delivered: deliveries.py).
- No replica ready in any allowed PoP: publish a demand signal (the autoscaler's wake-up)
  and hold the request until a replica's first ready heartbeat or the tenant's
  X-Scale-Up-Timeout; held requests resume in arrival order.
- Every allowed replica full: 503 + Retry-After. Never a PoP outside the residency rule.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeinfer.services.router.config import RouterConfig
from edgeinfer.services.router.deliveries import DeliveryConfirmations
from edgeinfer.services.router.deployments import DeploymentCache
from edgeinfer.services.router.gate import TenantGate
from edgeinfer.services.router.holds import Holds
from edgeinfer.services.router.hopkeys import HopKeys
from edgeinfer.services.router.idempotency import HEADER as IDEMPOTENCY_HEADER
from edgeinfer.services.router.idempotency import Idempotency
from edgeinfer.services.router.location import client_region
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.services.router.policy import Route, choose, order_pops
from edgeinfer.services.router.queue import SlotQueue
from edgeinfer.services.router.signals import DemandSignals
from edgeinfer.services.router.table import RoutingTable
from edgeinfer.services.router.upstream import Forwarder, NotStarted, answer
from edgeinfer.shared.bus import Unavailable, decode_or_warn
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import (
    Deployment,
    KeyRevoked,
    accounts_event_decoder,
    budget_decoder,
    encode,
    heartbeat_decoder,
    new_id,
)
from edgeinfer.shared.hops import now_ms
from edgeinfer.shared.http import EXCEPTION_HANDLERS, Refusal, metrics_guard, unstorable
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tenancy import KeyResolver, Tenant

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


def seconds_header(raw: str | None, default: float, most: float, header: str, code: str) -> float:
    """A client's wait in seconds (X-Scale-Up-Timeout, X-Queue-Timeout), or the default."""
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise Refusal(400, code, f"{header} is seconds in [0; {most:g}]")
    return value


def scale_up_timeout_of(raw: str | None, config: RouterConfig) -> float:
    """How long the client will wait for a cold deployment (X-Scale-Up-Timeout)."""
    return seconds_header(raw, config.scale_up_timeout_s, config.max_scale_up_timeout_s,
                          "X-Scale-Up-Timeout", "invalid_scale_up_timeout")


def queue_timeout_of(raw: str | None, config: RouterConfig) -> float:
    """How long the client will wait for a slot when every replica is full (X-Queue-Timeout)."""
    return seconds_header(raw, config.queue_timeout_s, config.max_queue_timeout_s,
                          "X-Queue-Timeout", "invalid_queue_timeout")


def saturated(deployment: Deployment) -> Refusal:
    return Refusal(503, "saturated", "every replica in the deployment's allowed PoPs "
                   f"({', '.join(deployment.allowed_pops)}) is at capacity, and no slot freed in"
                   " time for this request", headers={"Retry-After": "1"})


class PopOrders:
    """The allowed PoPs nearest first, per client region and deployment (cached)."""

    def __init__(self, latency_ms: Mapping[str, Mapping[str, float]]) -> None:
        self._latency_ms = latency_ms
        self._orders: dict[tuple[str, tuple[str, ...]], list[tuple[str, float]]] = {}

    def __call__(self, region: str, allowed_pops: list[str]) -> list[tuple[str, float]]:
        key = (region, tuple(allowed_pops))
        ordered = self._orders.get(key)
        if ordered is None:
            if len(self._orders) > 10_000:
                self._orders.clear()
            ordered = order_pops(allowed_pops, self._latency_ms.get(region, {}))
            self._orders[key] = ordered
        return ordered


class RouterService:
    def __init__(self, nc: NATS, subjects: Subjects, config: RouterConfig,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._nc = nc
        self._subjects = subjects
        self._config = config
        self._clock = clock
        self.table = RoutingTable()
        self.keys = KeyResolver(nc, subjects, stale_s=config.cache_stale_s,
                                clock=clock.monotonic)
        self.metrics = RouterMetrics()
        self.gate = TenantGate()
        self.holds = Holds(self.metrics, clock)
        self.signals = DemandSignals(nc, subjects, self.metrics, clock)
        self.queue = SlotQueue(self.metrics, clock, config.queue_max)
        self._forwarder = Forwarder(self.table, self.metrics, clock, config.forward_timeout_s,
                                    self.queue.notify)
        self.hops = HopKeys(nc.jetstream(), subjects.hop_keys_bucket)
        self.deliveries = DeliveryConfirmations(nc.jetstream(), subjects.delivered(config.pop),
                                                self.metrics, clock, config.delivery_flush_s)
        self.idempotency = Idempotency(nc.jetstream(), subjects.idempotency_bucket, clock,
                                       config.claim_abandoned_s)
        self.deployments = DeploymentCache(nc, subjects, clock, config.deployment_cache_s,
                                           config.cache_stale_s)
        self._random = random.Random()
        self._pop_order = PopOrders(config.latency_ms)

    async def start(self) -> None:
        await self._forwarder.start()
        await self.hops.start()
        await self.deliveries.start()
        s = self._subjects
        await self._nc.subscribe(s.heartbeat_wildcard, cb=self._on_heartbeat)
        await self._nc.subscribe(s.key_revoked, cb=self._on_accounts_event)
        await self._nc.subscribe(s.tenant_changed, cb=self._on_accounts_event)
        await self._nc.subscribe(s.budget_wildcard, cb=self._on_budget)

    async def stop(self) -> None:
        await self.deliveries.stop()
        await self.hops.stop()
        await self._forwarder.stop()

    # --- events ----------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is None:
            return
        self.table.observe(beat, self._clock.monotonic())
        if beat.state == "ready":
            self.holds.release(beat.deployment_id)
            self.queue.notify(beat.deployment_id, beat.capacity)

    async def _on_accounts_event(self, msg: Msg) -> None:
        event = decode_or_warn(accounts_event_decoder, msg)
        if event is None:
            return
        if isinstance(event, KeyRevoked):
            self.keys.forget_key_hash(event.key_hash)
        else:
            self.keys.forget_tenant(event.tenant_id)
            self.gate.forget(event.tenant_id)

    async def _on_budget(self, msg: Msg) -> None:
        if (state := decode_or_warn(budget_decoder, msg)) is not None:
            self.gate.budget(state)

    # --- the request path ------------------------------------------------------------------

    async def infer(self, request: Request[Any, Any, Any], name: str) -> Response[Any]:
        started = self._clock.monotonic()
        deployment_label, pop_label = "", ""
        try:
            if why := unstorable(name):  # it would reach the registry's SQL
                raise Refusal(400, "invalid_text", f"the deployment name contains {why}")
            tenant = await self.keys.tenant_from_header(request.headers.get("authorization"))
            self.gate.admit(tenant, started)
            self.gate.in_flight[tenant.id] += 1
            try:
                deployment = await self.deployments.get(tenant.id, name)
                if deployment is None:
                    raise Refusal(404, "deployment_not_found", f"no deployment named {name!r}")
                deployment_label = deployment.id
                if (key := request.headers.get(IDEMPOTENCY_HEADER)) is not None:
                    response, pop_label, outside_s = await self.idempotency.once(
                        tenant.id, key, deployment.id, await request.body(),
                        lambda: self._serve(request, tenant, deployment))
                else:
                    response, pop_label, outside_s = await self._serve(request, tenant, deployment)
            finally:
                self.gate.in_flight[tenant.id] -= 1
        except Refusal as refusal:
            self.metrics.outcome(deployment_label, pop_label, refusal.code)
            raise
        total = self._clock.monotonic() - started
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
        scale_up_timeout = scale_up_timeout_of(request.headers.get("x-scale-up-timeout"), self._config)
        queue_timeout = queue_timeout_of(request.headers.get("x-queue-timeout"), self._config)
        region = client_region(request.headers.get(self._config.client_region_header),
                               request.client.host if request.client else None,
                               self._config.client_prefixes, self._config.default_client_region)
        ordered = self._pop_order(region, deployment.allowed_pops)
        nearest = ordered[0][0] if ordered else ""
        # The runner takes tenant, deployment and request from the signed token alone.
        request_id = new_id()
        hop = self.hops.signer.token(tenant.id, deployment.id, request_id, now_ms(self._clock))
        forward = encode({"inputs": payload.inputs})
        tried: set[str] = set()
        waited_s = 0.0
        deadline: float | None = None  # set when the request is first held
        ticket: int | None = None  # its place in the queue, once it waits for a slot
        queue_deadline = queued_s = 0.0
        attempts = 0
        while True:
            # Heartbeats come over NATS: while it is away, the replicas last heard from stay
            # routable for the bounded staleness instead of vanishing after a few seconds.
            table = self.table.by_pop(deployment.id, self._clock.monotonic(),
                                      None if self._nc.is_connected else self._config.cache_stale_s)
            route = choose(ordered, table, self._random.randrange, frozenset(tried))
            # A slot, and nobody queued before this request: served; else it waits its turn.
            if isinstance(route, Route) and (ticket is not None or not self.queue.waiting(deployment.id)):
                # Counted once per request, at its first attempt: one refused by a draining
                # replica and sent again is still one request served.
                await self.signals.activity(deployment.id, route.replica.pop,
                                            requests=1 if attempts == 0 else 0)
                attempts += 1
                try:
                    upstream = await self._forwarder.forward(
                        deployment.id, route.replica, forward, hop, request.headers.get("traceparent"))
                except NotStarted:
                    tried.add(route.replica.runner_id)
                    self.table.mark_down(deployment.id, route.replica.runner_id)
                    if attempts >= 2:
                        raise Refusal(503, "no_replica_available",
                                      "the replicas tried did not accept the request; retry"
                                      " shortly", headers={"Retry-After": "1"}) from None
                    continue
                self.signals.observe_service_time(deployment.id, upstream.seconds)
                response = answer(upstream, request_id, route.replica, deadline is not None,
                                  waited_s, self.deliveries.delivered, queued_s)
                return response, route.replica.pop, upstream.seconds + waited_s + queued_s
            # Every allowed replica full, or others queued first: wait for a slot, in turn.
            if isinstance(route, Route) or route.reason == "saturated":
                now = self._clock.monotonic()
                if ticket is None:  # a full queue refuses at once
                    ticket, queue_deadline = self.queue.enter(deployment.id, now, queue_timeout)
                if now >= queue_deadline:
                    await self.signals.saturation(deployment.id, nearest)
                    raise saturated(deployment)
                await self.signals.queued(deployment.id, nearest, self.queue.waiting(deployment.id) + 1)
                queued_s += await self.queue.wait(deployment.id, nearest, ticket, queue_deadline - now)
                continue
            if not self._nc.is_connected:  # nothing can wake the deployment: do not hold
                raise Unavailable("the PoP's message bus")
            # Cold — nothing ready anywhere allowed, or the one tried refused (draining, gone):
            # wake the deployment and hold the request.
            now = self._clock.monotonic()
            deadline = now + scale_up_timeout if deadline is None else deadline
            remaining = deadline - now
            await self.signals.publish(deployment.id, nearest,
                                       held=self.holds.waiting(deployment.id) + 1)
            if remaining <= 0:
                raise Refusal(503, "cold_start_timeout",
                              f"no replica became ready within {scale_up_timeout:g} s "
                              f"in {', '.join(deployment.allowed_pops)}; scale-up continues",
                              headers={"Retry-After": "5"})
            waited_s += await self.holds.wait(deployment.id, nearest, min(remaining, 2.0))

    def app(self, metrics_token: str | None = None) -> Litestar:
        service = self

        @post("/v1/deployments/{name:str}/infer", operation_id="infer",
              request_max_body_size=self._config.max_body_bytes)
        async def infer(request: Request[Any, Any, Any], name: str) -> Response[Any]:
            return await service.infer(request, name)

        @get("/healthz", operation_id="router_health")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        @get("/metrics", operation_id="router_metrics", media_type=CONTENT_TYPE_LATEST,
             guards=[metrics_guard(metrics_token)])
        async def metrics() -> bytes:
            return generate_latest(service.metrics.registry)

        return Litestar(route_handlers=[infer, healthz, metrics],
                        exception_handlers=EXCEPTION_HANDLERS, openapi_config=None, logging_config=None)
