"""The registry: models, versions, artifacts and deployments (schema `registry`).

Answers `<ns>.registry.rpc.resolve_deployment` and `.list_deployments` for the router and
the autoscaler, and announces changes on `<ns>.registry.deployment.updated`.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Router, get, put
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from edgeinfer.services.registry import repository
from edgeinfer.shared.artifacts import put_artifact
from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock
from edgeinfer.shared.events import (
    Deployment,
    DeploymentUpdated,
    ListDeploymentsReply,
    ResolveDeploymentReply,
    ResolveDeploymentRequest,
    Schedule,
    encode,
    new_id,
)
from edgeinfer.shared.http import Refusal, unstorable
from edgeinfer.shared.model_formats import FRAMEWORKS, InvalidArtifact, read_embedding_artifact
from edgeinfer.shared.schedules import InvalidSchedule
from edgeinfer.shared.schedules import validate as validate_schedule
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tenancy import KeyResolver, Tenant, tenant_provider
from edgeinfer.shared.topology import Pop

log = logging.getLogger(__name__)

MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
GPU_CLASSES = ("cpu", "l40s", "h100")


class DeploymentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    version: str
    pops: list[str]
    gpu_class: str = "cpu"
    min_replicas: int = 0
    max_replicas: int = 1
    # e.g. {"cron": "0 8 * * 1-5", "timezone": "Europe/Berlin", "duration_s": 36000,
    #       "pop": "eu-west", "min_replicas": 2}: keep 2 warm on weekdays 08:00–18:00.
    schedules: list[Schedule] = msgspec.field(default_factory=list)


def deployment_view(d: Deployment) -> dict[str, Any]:
    return {"id": d.id, "name": d.name, "model": d.model_name, "version": d.model_version,
            "gpu_class": d.gpu_class, "pops": d.allowed_pops, "min_replicas": d.min_replicas,
            "max_replicas": d.max_replicas, "schedules": [msgspec.structs.asdict(s) for s in d.schedules]}


def validate_artifact(framework: str, data: bytes) -> None:
    """Parse and check an artifact without running it; tenant artifacts are never unpickled."""
    if framework == "onnx":
        import onnx

        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as exc:
            raise Refusal(400, "invalid_artifact", f"not a valid ONNX model: {exc}") from None
    elif framework == "sentence-embedding":
        try:
            read_embedding_artifact(data)
        except InvalidArtifact as exc:
            raise Refusal(400, "invalid_artifact",
                          f"not a valid sentence-embedding model: {exc}") from None
    else:
        raise Refusal(400, "unknown_framework", f"framework must be one of {list(FRAMEWORKS)}")


class RegistryService:
    def __init__(self, pool: asyncpg.Pool, nc: NATS, subjects: Subjects,
                 pops: dict[str, Pop], clock: Clock = SYSTEM_CLOCK) -> None:
        self._pool = pool
        self._clock = clock
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._pops = pops
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        s = self._subjects
        self._subscriptions += [
            await self._nc.subscribe(s.resolve_deployment, queue="registry", cb=self._on_resolve),
            await self._nc.subscribe(s.list_deployments, queue="registry", cb=self._on_list),
        ]

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.unsubscribe()

    async def _on_resolve(self, msg: Msg) -> None:
        try:
            req = msgspec.json.decode(msg.data, type=ResolveDeploymentRequest)
        except msgspec.ValidationError:
            await msg.respond(encode(ResolveDeploymentReply(deployment=None)))
            return
        if unstorable(req.tenant_id) or unstorable(req.name):  # no such row can exist
            await msg.respond(encode(ResolveDeploymentReply(deployment=None)))
            return
        found = await repository.get_deployment(self._pool, req.tenant_id, req.name)
        await msg.respond(encode(ResolveDeploymentReply(deployment=found)))

    async def _on_list(self, msg: Msg) -> None:
        deployments, as_of = await repository.list_all_deployments_admin(self._pool)
        await msg.respond(encode(ListDeploymentsReply(deployments=deployments, as_of=as_of)))

    # --- operations (used by the routes and by `edgeinfer up`'s demo seed) ----------------

    async def register_version(self, tenant_id: str, model: str, version: str, data: bytes,
                               framework: str = "onnx") -> dict[str, Any]:
        validate_artifact(framework, data)
        digest = await put_artifact(self._js, self._subjects.artifact_bucket, data)
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                model_id = await repository.upsert_model(conn, tenant_id, model, framework)
            except ValueError as exc:
                raise Refusal(409, "framework_mismatch", str(exc)) from None
            try:
                await repository.add_version(conn, tenant_id, model_id, version, digest, len(data))
            except ValueError as exc:
                raise Refusal(409, "version_exists", str(exc)) from None
        return {"model": model, "version": version, "framework": framework,
                "artifact_digest": digest, "bytes": len(data)}

    async def deploy(self, tenant_id: str, name: str, spec: DeploymentSpec) -> Deployment:
        unknown = sorted(set(spec.pops) - set(self._pops))
        if not spec.pops or unknown:
            raise Refusal(400, "unknown_pop",
                          f"pops must be a non-empty subset of {sorted(self._pops)}; unknown: {unknown}")
        if spec.gpu_class not in GPU_CLASSES:
            raise Refusal(400, "unknown_gpu_class", f"gpu_class must be one of {list(GPU_CLASSES)}")
        if not 0 <= spec.min_replicas <= spec.max_replicas or spec.max_replicas < 1:
            raise Refusal(400, "invalid_replicas", "need 0 <= min_replicas <= max_replicas, max >= 1")
        for i, schedule in enumerate(spec.schedules):
            try:
                validate_schedule(schedule, spec.pops)
            except InvalidSchedule as exc:
                raise Refusal(400, "invalid_schedule", f"schedules[{i}]: {exc}") from None
            if schedule.min_replicas > spec.max_replicas:
                raise Refusal(400, "invalid_schedule",
                              f"schedules[{i}]: min_replicas exceeds max_replicas")
        async with self._pool.acquire() as conn, conn.transaction():
            version_id = await repository.version_id(conn, tenant_id, spec.model, spec.version)
            if version_id is None:
                raise Refusal(404, "model_version_not_found",
                              f"no version {spec.version!r} of model {spec.model!r}")
            deployment = await repository.upsert_deployment(
                conn, tenant_id, name, version_id, spec.gpu_class, sorted(set(spec.pops)),
                spec.min_replicas, spec.max_replicas, spec.schedules)
        # Core NATS: subscribers also re-list on start, so a missed update heals itself.
        await self._nc.publish(self._subjects.deployment_updated, encode(DeploymentUpdated(
            id=new_id(), source="registry", time=self._clock.now(), tenant_id=tenant_id,
            deployment=deployment)))
        return deployment

    def router(self, resolver: KeyResolver) -> Router:
        service = self
        pool = self._pool

        @get("/deployments", operation_id="list_deployments")
        async def list_deployments(tenant: Tenant) -> list[dict[str, Any]]:
            return [deployment_view(d) for d in await repository.list_deployments(pool, tenant.id)]

        @get("/deployments/{name:str}", operation_id="get_deployment")
        async def get_deployment(tenant: Tenant, name: str) -> dict[str, Any]:
            found = await repository.get_deployment(pool, tenant.id, name)
            if found is None:
                raise Refusal(404, "deployment_not_found", f"no deployment named {name!r}")
            return deployment_view(found)

        @put("/deployments/{name:str}", operation_id="put_deployment")
        async def put_deployment(tenant: Tenant, name: str, data: DeploymentSpec) -> dict[str, Any]:
            return deployment_view(await service.deploy(tenant.id, name, data))

        @put("/models/{model:str}/versions/{version:str}", operation_id="put_model_version",
             request_max_body_size=MAX_ARTIFACT_BYTES)
        async def put_version(tenant: Tenant, model: str, version: str,
                              request: Request,  # type: ignore[type-arg]
                              framework: str = "onnx") -> dict[str, Any]:
            """The artifact is the body: an ONNX file, or for `?framework=sentence-embedding`
            a tar of a sentence-transformers model directory (docs/models.md)."""
            data = await request.body()
            if not data:
                raise Refusal(400, "empty_artifact", "send the model artifact as the request body")
            return await service.register_version(tenant.id, model, version, data, framework)

        return Router("/v1", route_handlers=[list_deployments, get_deployment, put_deployment,
                                             put_version],
                      dependencies={"tenant": tenant_provider(resolver)}, tags=["registry"])
