"""Start and stop the platform: infrastructure, migrations, services, HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar, get
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.api.service import AccountsService
from services.autoscaler.admin import admin_router as autoscaler_admin_router
from services.autoscaler.executor import ReplicaExecutor
from services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor, parse_local_gpus
from services.autoscaler.service import AutoscalerConfig, AutoscalerService, autoscaler_config_from_env
from services.billing.config import BillingConfig, billing_config_from_env
from services.billing.portal import TEMPLATES as PORTAL_TEMPLATES
from services.billing.portal import portal_router
from services.billing.routes import admin_router as billing_admin_router
from services.billing.routes import tenant_router as billing_tenant_router
from services.billing.service import BillingService
from services.metering.config import MeteringConfig, metering_config_from_env
from services.metering.service import MeteringService
from services.registry.service import RegistryService
from services.router.config import RouterConfig, router_config_from_env
from services.router.service import RouterService
from shared.bus import connect, ensure_hub_streams, ensure_streams
from shared.config import ConfigError, PlatformConfig, env_choice, env_int, env_optional, env_str
from shared.db import create_pool, migrate
from shared.embedded import EmbeddedNats, EmbeddedPostgres, start_nats, start_postgres
from shared.http import EXCEPTION_HANDLERS
from shared.nats_topology import Topology, load_topology
from shared.subjects import Subjects
from shared.tenancy import KeyResolver
from shared.topology import Pop, pops_from_env

log = logging.getLogger("edgeinfer")

SERVICES = ("api", "registry", "metering", "billing", "router", "autoscaler")
# The services that answer on the control plane's HTTP server (the API port); they are
# also the ones that need PostgreSQL. A router alone (a PoP's) needs neither it nor the
# platform's streams (docs/topology.md).
HTTP_SERVICES = ("api", "registry", "metering", "billing")


def needs_database(services: tuple[str, ...]) -> bool:
    return bool(set(services) & set(HTTP_SERVICES))


@dataclass(frozen=True)
class StackConfig:
    platform: PlatformConfig
    pops: dict[str, Pop]
    router: RouterConfig
    metering: MeteringConfig = field(default_factory=MeteringConfig)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    executor: str = "local"
    local_gpus: str = ""
    k8s_image: str | None = None
    k8s_namespace_prefix: str = "edgeinfer-"
    k8s_mig_classes: str = ""
    in_kubernetes: bool = False
    # The distributed layout (docs/topology.md), when this process runs on the hub: its
    # streams source each PoP's usage. None: one NATS server (`edgeinfer up`).
    topology: Topology | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_token: str | None = None
    services: tuple[str, ...] = SERVICES


def stack_config_from_env(platform: PlatformConfig, services: tuple[str, ...] = SERVICES,
                          env: dict[str, str] | None = None) -> StackConfig:
    env = dict(os.environ) if env is None else env
    return StackConfig(
        platform=platform,
        pops=pops_from_env(env),
        router=router_config_from_env(env),
        metering=metering_config_from_env(env),
        autoscaler=autoscaler_config_from_env(env),
        billing=billing_config_from_env(env),
        executor=env_choice(env, "EDGEINFER_EXECUTOR", StackConfig.executor, ("local", "kubernetes")),
        local_gpus=env_str(env, "EDGEINFER_LOCAL_GPUS", StackConfig.local_gpus),
        k8s_image=env_optional(env, "EDGEINFER_K8S_IMAGE"),
        k8s_namespace_prefix=env_str(env, "EDGEINFER_K8S_NAMESPACE_PREFIX",
                                     StackConfig.k8s_namespace_prefix),
        k8s_mig_classes=env_str(env, "EDGEINFER_K8S_MIG_CLASSES", StackConfig.k8s_mig_classes),
        in_kubernetes=bool(env_optional(env, "KUBERNETES_SERVICE_HOST")),
        topology=load_topology(Path(path)) if (path := env_optional(env, "EDGEINFER_TOPOLOGY"))
        else None,
        api_host=env_str(env, "EDGEINFER_API_HOST", StackConfig.api_host),
        api_port=env_int(env, "EDGEINFER_API_PORT", StackConfig.api_port, lo=1, hi=65535),
        admin_token=env_optional(env, "EDGEINFER_ADMIN_TOKEN"),
        services=services,
    )


def ensure_port_free(host: str, port: int, key: str) -> None:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(f"{host}:{port} is already in use; set {key} to a free port") from None


def load_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    token = "adm_" + secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token)
    return token


@dataclass
class Stack:
    config: StackConfig
    nats_url: str = ""
    database_url: str = ""
    admin_token: str = ""
    embedded_nats: EmbeddedNats | None = None
    embedded_postgres: EmbeddedPostgres | None = None
    nc: Any = None
    pool: Any = None
    accounts: AccountsService | None = None
    registry: RegistryService | None = None
    metering: MeteringService | None = None
    billing: BillingService | None = None
    router: RouterService | None = None
    autoscaler: AutoscalerService | None = None
    servers: list[uvicorn.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    watchers: list[asyncio.Task[Any]] = field(default_factory=list)
    nats_restarts: int = 0

    @property
    def source_pops(self) -> list[str]:
        """The PoPs whose usage the hub sources (none on one NATS server)."""
        topology = self.config.topology
        return [] if topology is None else [p.pop.name for p in topology.pops]

    @property
    def api_url(self) -> str:
        return f"http://{self.config.api_host}:{self.config.api_port}"

    @property
    def router_url(self) -> str:
        return f"http://{self.config.router.host}:{self.config.router.port}"

    async def start(self) -> None:
        c = self.config
        p = c.platform
        wanted = set(c.services)
        if wanted & set(HTTP_SERVICES):
            ensure_port_free(c.api_host, c.api_port, "EDGEINFER_API_PORT")
        if "router" in wanted:
            ensure_port_free(c.router.host, c.router.port, "EDGEINFER_ROUTER_PORT")
        p.state_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = c.admin_token or load_or_create_secret(p.state_dir / "admin-token")

        if p.nats_url:
            self.nats_url = p.nats_url
        else:
            log.info("NATS_URL not set: starting embedded nats-server (JetStream) in %s", p.state_dir)
            # In this, the main thread, not a worker thread: the kernel's parent-death signal
            # that stops the server if we are SIGKILLed belongs to the thread that starts it
            # (a short block of the loop, before anything else runs on it).
            self.embedded_nats = start_nats(p.state_dir)
            self.nats_url = self.embedded_nats.url
        if self.embedded_nats is not None:
            self.watchers.append(asyncio.create_task(self._keep_nats_up(), name="nats-watchdog"))
        subjects = Subjects(p.namespace)
        self.nc = await connect(self.nats_url, name="edgeinfer-control-plane")
        if wanted != {"router"}:
            if c.topology is None:
                await ensure_streams(self.nc.jetstream(), subjects, p.stream_replicas)
            else:
                await ensure_hub_streams(self.nc.jetstream(), subjects, self.source_pops,
                                         p.stream_replicas)
        if needs_database(c.services):
            await self._open_database()

        resolver = KeyResolver(self.nc, subjects)
        route_handlers: list[Any] = []
        if "api" in wanted:
            self.accounts = AccountsService(self.pool, self.nc, subjects)
            await self.accounts.start()
            route_handlers.append(self.accounts.admin_router(self.admin_token))
            route_handlers.append(autoscaler_admin_router(self.nc, subjects, self.admin_token))
        if "registry" in wanted:
            self.registry = RegistryService(self.pool, self.nc, subjects, c.pops)
            await self.registry.start()
            route_handlers.append(self.registry.router(resolver))
        if "metering" in wanted:
            self.metering = MeteringService(self.pool, self.nc, subjects, c.metering,
                                            source_pops=self.source_pops)
            await self.metering.start()
            route_handlers.append(self.metering.router(resolver))
            route_handlers.append(self.metering.admin_router(self.admin_token))
        if "billing" in wanted:
            self.billing = BillingService(self.pool, self.nc, subjects, c.billing)
            await self.billing.start()
            route_handlers.append(billing_tenant_router(self.billing, resolver))
            route_handlers.append(billing_admin_router(self.billing, self.admin_token))
            # Persisted, so portal sessions survive a restart; any string, hashed to a key.
            portal_secret = c.billing.portal_secret or load_or_create_secret(
                p.state_dir / "portal-secret")
            route_handlers.append(portal_router(self.billing, resolver,
                                                hashlib.sha256(portal_secret.encode()).digest()))
        if route_handlers:
            self._serve(control_plane_app(route_handlers), c.api_host, c.api_port)
        if "router" in wanted:
            self.router = RouterService(self.nc, subjects, c.router)
            await self.router.start()
            self._serve(self.router.app(), c.router.host, c.router.port)
        if "autoscaler" in wanted:
            executor = await make_executor(c, self.nats_url)
            self.autoscaler = AutoscalerService(self.nc, subjects, executor, c.pops, c.autoscaler)
            await self.autoscaler.start()
        for server in self.servers:
            while not server.started:
                if any(t.done() for t in self.tasks):
                    for t in self.tasks:
                        if t.done() and t.exception():
                            raise t.exception()  # type: ignore[misc]
                    raise RuntimeError("an HTTP server stopped during start-up")
                await asyncio.sleep(0.05)

    async def _open_database(self) -> None:
        p = self.config.platform
        if p.database_url:
            self.database_url = p.database_url
        else:
            log.info("DATABASE_URL not set: starting embedded PostgreSQL in %s", p.state_dir)
            self.embedded_postgres = await asyncio.to_thread(start_postgres, p.state_dir)
            self.database_url = self.embedded_postgres.url
        applied = await migrate(self.database_url)
        log.info("migrations: %d applied now", len(applied))
        self.pool = await create_pool(self.database_url, max_size=10)

    async def _keep_nats_up(self) -> None:
        """Restart the embedded nats-server when it dies, on the same port and store (the
        services' clients reconnect by themselves), with backoff while it keeps failing."""
        port = int(self.nats_url.rsplit(":", 1)[1])
        backoff_s = 0.5
        while True:
            await asyncio.sleep(0.25)
            nats = self.embedded_nats
            if nats is None or (code := nats.process.poll()) is None:
                backoff_s = 0.5
                continue
            self.nats_restarts += 1
            log.error("embedded nats-server exited with %s; restarting it (restart %d)",
                      code, self.nats_restarts)
            try:
                # In a worker thread, not to stall the router: the new server then has no
                # parent-death signal, and a later start's stop_orphan cleans up after a
                # SIGKILLed `edgeinfer up`; a normal stop stops it as usual.
                self.embedded_nats = await asyncio.to_thread(
                    start_nats, self.config.platform.state_dir, port)
                log.info("embedded nats-server is back on port %d", port)
            except Exception as exc:
                log.error("restarting nats-server failed (%s); next try in %.1f s", exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(30.0, backoff_s * 2)

    def _serve(self, app: Litestar, host: str, port: int) -> None:
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               lifespan="on", access_log=False))
        # The launcher owns signals: uvicorn must not install its own handlers.
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.servers.append(server)
        self.tasks.append(asyncio.create_task(server.serve()))

    async def stop(self) -> None:
        for watcher in self.watchers:
            watcher.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        if self.autoscaler is not None:
            await self.autoscaler.stop()  # drains and stops every runner process
        for server in self.servers:
            server.should_exit = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for service in (self.router, self.billing, self.metering, self.registry, self.accounts):
            if service is not None:
                with contextlib.suppress(Exception):
                    await service.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.pool is not None:
            await self.pool.close()
        if self.embedded_nats is not None:
            await asyncio.to_thread(self.embedded_nats.stop)
        if self.embedded_postgres is not None:
            await asyncio.to_thread(self.embedded_postgres.stop)


async def make_executor(c: StackConfig, nats_url: str) -> ReplicaExecutor:
    """Local processes (the default), or Kubernetes with EDGEINFER_EXECUTOR=kubernetes."""
    p = c.platform
    if c.executor == "local":
        return LocalProcessExecutor(LocalExecutorConfig(
            nats_url=nats_url, namespace=p.namespace, state_dir=p.state_dir, pops=c.pops,
            gpus=parse_local_gpus(c.local_gpus)))
    from kubernetes_asyncio import config as k8s_config
    from kubernetes_asyncio.client import ApiClient

    from services.autoscaler.kubernetes import (
        KubernetesConfig,
        KubernetesExecutor,
        parse_mig_classes,
    )

    if c.k8s_image is None:
        raise ConfigError("EDGEINFER_EXECUTOR=kubernetes needs EDGEINFER_K8S_IMAGE")
    if c.in_kubernetes:
        k8s_config.load_incluster_config()
    else:
        await k8s_config.load_kube_config()
    return KubernetesExecutor(ApiClient(), KubernetesConfig(
        image=c.k8s_image, nats_url=nats_url, namespace=p.namespace, pops=dict(c.pops),
        namespace_prefix=c.k8s_namespace_prefix, mig_classes=parse_mig_classes(c.k8s_mig_classes)))


def control_plane_app(route_handlers: list[Any]) -> Litestar:
    @get("/healthz", operation_id="health", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/metrics", operation_id="metrics", tags=["ops"], media_type=CONTENT_TYPE_LATEST)
    async def metrics() -> bytes:
        return generate_latest()

    return Litestar(
        route_handlers=[*route_handlers, healthz, metrics],
        exception_handlers=EXCEPTION_HANDLERS,
        template_config=TemplateConfig(directory=PORTAL_TEMPLATES, engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(title="edgeinfer", version="0.1.0", path="/schema"),
    )
