"""The router: the front door of every inference request.

Authenticates the key (shared/tenancy.py), resolves the deployment from the registry
(cached), picks a replica with the pure policy (policy.py) over the table built from
runner heartbeats (table.py), and forwards. A replica that refuses the connection never
started the request, so the router retries once on the next best; a replica that fails
after taking the request is not retried (the model may not be idempotent) and the
tenant gets a 502 that says so. Failed attempts are never charged: only a runner that
ran the model emits usage.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from litestar import Litestar, Request, Response, get, post
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.router.config import RouterConfig
from services.router.policy import NoRoute, ReplicaView, choose
from services.router.table import RoutingTable
from shared.bus import request as nats_request
from shared.events import (
    DemandSignal,
    Deployment,
    ResolveDeploymentReply,
    ResolveDeploymentRequest,
    encode,
    heartbeat_decoder,
    new_id,
)
from shared.http import EXCEPTION_HANDLERS, Refusal
from shared.subjects import Subjects
from shared.tenancy import KeyResolver

log = logging.getLogger(__name__)


class InferRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inputs: list[list[float]]


_infer_decoder = msgspec.json.Decoder(InferRequest)


class _NotStarted(Exception):
    """The replica did not take the request (refused connection, or not ready): safe to retry."""


class RouterService:
    def __init__(self, nc: NATS, subjects: Subjects, config: RouterConfig) -> None:
        self._nc = nc
        self._subjects = subjects
        self._config = config
        self.table = RoutingTable()
        self.keys = KeyResolver(nc, subjects)
        self._deployments: dict[tuple[str, str], tuple[float, Deployment | None]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self._config.forward_timeout_s))
        await self._nc.subscribe(self._subjects.heartbeat_wildcard, cb=self._on_heartbeat)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = heartbeat_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring an undecodable heartbeat on %s", msg.subject)
            return
        self.table.observe(beat, time.monotonic())

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

    async def infer(self, request: Request[Any, Any, Any], name: str) -> Response[Any]:
        tenant = await self.keys.tenant_from_header(request.headers.get("authorization"))
        deployment = await self.deployment(tenant.id, name)
        if deployment is None:
            raise Refusal(404, "deployment_not_found", f"no deployment named {name!r}")
        body = await request.body()
        try:
            payload = _infer_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Refusal(400, "invalid_body",
                          f"expected JSON {{\"inputs\": [[number, ...], ...]}}: {exc}") from None
        region = request.headers.get(self._config.client_region_header,
                                     self._config.default_client_region)
        rtt = self._config.latency_ms.get(region, {})
        request_id = new_id()
        forward = encode({"tenant_id": tenant.id, "request_id": request_id,
                          "deployment_id": deployment.id, "inputs": payload.inputs})
        tried: set[str] = set()
        for _attempt in range(2):
            route = choose(deployment.allowed_pops, self.table.replicas(deployment.id,
                                                                         time.monotonic()),
                           rtt, frozenset(tried))
            if isinstance(route, NoRoute):
                return await self._no_route(deployment, route)
            try:
                status, data = await self._forward(route.replica, forward)
            except _NotStarted:
                tried.add(route.replica.runner_id)
                self.table.mark_down(deployment.id, route.replica.runner_id)
                continue
            return self._answer(status, data, request_id, route.replica)
        raise Refusal(503, "no_replica_available",
                      "the replicas tried did not accept the request; retry shortly",
                      headers={"Retry-After": "1"})

    async def _forward(self, replica: ReplicaView, body: bytes) -> tuple[int, bytes]:
        assert self._http is not None
        self.table.outstanding[replica.runner_id] += 1
        try:
            async with self._http.post(replica.url + "/infer", data=body,
                                       headers={"content-type": "application/json"}) as resp:
                data = await resp.read()
                if resp.status == 503:
                    raise _NotStarted()
                return resp.status, data
        except aiohttp.ClientConnectorError:
            raise _NotStarted() from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Refusal(502, "runner_failed",
                          f"the replica failed while serving the request ({type(exc).__name__});"
                          " it was not retried because it may have run, and it is not charged"
                          ) from None
        finally:
            self.table.outstanding[replica.runner_id] -= 1

    def _answer(self, status: int, data: bytes, request_id: str,
                replica: ReplicaView) -> Response[Any]:
        headers = {"x-request-id": request_id, "x-edgeinfer-pop": replica.pop}
        if status == 200:
            result = msgspec.json.decode(data)
            usage = result.get("usage", {})
            headers["x-edgeinfer-gpu-us"] = str(usage.get("gpu_us", 0))
            return Response({"request_id": request_id, "outputs": result.get("outputs"),
                             "usage": usage}, status_code=200, headers=headers)
        if 400 <= status < 500:
            raise Refusal(400, "invalid_input", _runner_error_message(data))
        raise Refusal(502, "runner_error", f"the replica answered {status}; not charged")

    async def _no_route(self, deployment: Deployment, route: NoRoute) -> Response[Any]:
        if route.reason == "no_replica":
            await self._nc.publish(self._subjects.demand(deployment.id), encode(DemandSignal(
                id=new_id(), source="router", time=datetime.now(UTC),
                deployment_id=deployment.id, held_requests=1)))
            message = ("no replica of this deployment is ready in its allowed PoPs "
                       f"({', '.join(deployment.allowed_pops)}); scale-up was requested")
        else:
            message = ("every replica in the deployment's allowed PoPs "
                       f"({', '.join(deployment.allowed_pops)}) is at capacity")
        raise Refusal(503, route.reason, message,
                      headers={"Retry-After": str(route.retry_after_s)})

    def app(self) -> Litestar:
        service = self

        @post("/v1/deployments/{name:str}/infer", operation_id="infer",
              request_max_body_size=self._config.max_body_bytes)
        async def infer(request: Request[Any, Any, Any], name: str) -> Response[Any]:
            return await service.infer(request, name)

        @get("/healthz", operation_id="router_health")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        return Litestar(route_handlers=[infer, healthz], exception_handlers=EXCEPTION_HANDLERS,
                        on_startup=[], openapi_config=None)


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


