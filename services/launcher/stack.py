"""Start and stop the platform: infrastructure, migrations, services, HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from litestar import Litestar, get
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeinfer.services.api.idempotency import idempotency
from edgeinfer.services.api.service import AccountsService
from edgeinfer.services.autoscaler.admin import admin_router as autoscaler_admin_router
from edgeinfer.services.autoscaler.executor import ReplicaExecutor
from edgeinfer.services.autoscaler.local import LocalExecutorConfig, LocalProcessExecutor, parse_local_gpus
from edgeinfer.services.autoscaler.service import (
    AutoscalerConfig,
    AutoscalerService,
    autoscaler_config_from_env,
)
from edgeinfer.services.billing.config import BillingConfig, billing_config_from_env
from edgeinfer.services.billing.portal import TEMPLATES as PORTAL_TEMPLATES
from edgeinfer.services.billing.portal import portal_router
from edgeinfer.services.billing.routes import admin_router as billing_admin_router
from edgeinfer.services.billing.routes import tenant_router as billing_tenant_router
from edgeinfer.services.billing.service import BillingService
from edgeinfer.services.launcher.health import health_app
from edgeinfer.services.metering.config import MeteringConfig, metering_config_from_env
from edgeinfer.services.metering.service import MeteringService
from edgeinfer.services.registry.service import RegistryService
from edgeinfer.services.router.config import RouterConfig, router_config_from_env
from edgeinfer.services.router.service import RouterService
from edgeinfer.shared.bus import connect, ensure_platform_streams
from edgeinfer.shared.config import (
    ConfigError,
    PlatformConfig,
    env_bool,
    env_choice,
    env_int,
    env_optional,
    env_str,
)
from edgeinfer.shared.db import create_pool, migrate
from edgeinfer.shared.http import EXCEPTION_HANDLERS, metrics_guard, refuse_unstorable_text
from edgeinfer.shared.nats_permissions import user_name, with_user
from edgeinfer.shared.nats_topology import Topology, load_topology
from edgeinfer.shared.openapi import document_errors
from edgeinfer.shared.private_files import load_or_create_secret
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.tenancy import KeyResolver
from edgeinfer.shared.topology import Pop, pops_from_env

log = logging.getLogger("edgeinfer")

SERVICES = ("api", "registry", "metering", "billing", "router", "autoscaler")
# The services that need PostgreSQL; `api` serves the HTTP routes of all four (Stack). A
# router alone (a PoP's) needs neither it nor the platform's streams (docs/topology.md).
DATABASE_SERVICES = ("api", "registry", "metering", "billing")


def needs_database(services: tuple[str, ...]) -> bool:
    return bool(set(services) & set(DATABASE_SERVICES))


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
    runner_bind_host: str = "127.0.0.1"  # the local executor's runners (LocalExecutorConfig)
    runner_advertise_host: str = "127.0.0.1"
    k8s_namespace_prefix: str = "edgeinfer-"
    k8s_mig_classes: str = ""
    k8s_nats_secret: str | None = None  # in each PoP's namespace; key `runner`: its NATS_URL
    k8s_artifact_domain: str | None = None
    in_kubernetes: bool = False
    # The distributed layout (docs/topology.md), when this process runs on the hub: its
    # streams source each PoP's usage. None: one NATS server (`edgeinfer up`).
    topology: Topology | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    admin_token: str | None = None
    services: tuple[str, ...] = SERVICES
    # Set by `edgeinfer up` for its children: local runners watch it, not the autoscaler.
    supervisor_pid: int = 0
    # False where the streams and buckets are the admin's to make (a NATS with a user per
    # role, where a service may not create them): the service then only uses them.
    create_streams: bool = True
    # The NATS users' passwords (JSON, user → password): the local executor gives each
    # runner the user of its PoP, `runner-<pop>`, on the host of NATS_URL.
    nats_credentials: Path | None = None
    # /healthz, /readyz and /metrics of this process (services/launcher/health.py), for
    # probes and scrapes where it serves no HTTP of its own; None: not served.
    health_port: int | None = None
    health_host: str = "0.0.0.0"


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
        runner_bind_host=env_str(env, "EDGEINFER_RUNNER_BIND_HOST", StackConfig.runner_bind_host),
        runner_advertise_host=env_str(env, "EDGEINFER_RUNNER_ADVERTISE_HOST",
                                      StackConfig.runner_advertise_host),
        k8s_namespace_prefix=env_str(env, "EDGEINFER_K8S_NAMESPACE_PREFIX",
                                     StackConfig.k8s_namespace_prefix),
        k8s_mig_classes=env_str(env, "EDGEINFER_K8S_MIG_CLASSES", StackConfig.k8s_mig_classes),
        k8s_nats_secret=env_optional(env, "EDGEINFER_K8S_NATS_SECRET"),
        k8s_artifact_domain=env_optional(env, "EDGEINFER_K8S_ARTIFACT_DOMAIN"),
        in_kubernetes=bool(env_optional(env, "KUBERNETES_SERVICE_HOST")),
        topology=load_topology(Path(path)) if (path := env_optional(env, "EDGEINFER_TOPOLOGY"))
        else None,
        api_host=env_str(env, "EDGEINFER_API_HOST", StackConfig.api_host),
        api_port=env_int(env, "EDGEINFER_API_PORT", StackConfig.api_port, lo=1, hi=65535),
        admin_token=env_optional(env, "EDGEINFER_ADMIN_TOKEN"),
        services=services,
        supervisor_pid=env_int(env, "EDGEINFER_SUPERVISOR_PID", StackConfig.supervisor_pid,
                               lo=0, hi=2**22),
        create_streams=env_bool(env, "EDGEINFER_CREATE_STREAMS", StackConfig.create_streams),
        nats_credentials=Path(path) if (path := env_optional(env, "EDGEINFER_NATS_CREDENTIALS"))
        else None,
        health_port=env_int(env, "EDGEINFER_HEALTH_PORT", 0, lo=1, hi=65535)
        if env_optional(env, "EDGEINFER_HEALTH_PORT") else None,
        health_host=env_str(env, "EDGEINFER_HEALTH_HOST", StackConfig.health_host),
    )


def ensure_port_free(host: str, port: int, key: str) -> None:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(f"{host}:{port} is already in use; set {key} to a free port") from None


@dataclass
class Stack:
    """Services in this one process, on the given NATS and PostgreSQL (`edgeinfer run`).

    `api` is the HTTP front: it serves every tenant, admin and portal route, the
    registry's, metering's and billing's included, over PostgreSQL and NATS. `registry`,
    `metering` and `billing` are each service's own work: its NATS responders, consumers
    and loops. So each runs as a process of its own under `edgeinfer up`, and the API port
    answers while any of them restarts."""

    config: StackConfig
    admin_token: str = ""
    nc: Any = None
    pool: Any = None
    started: list[Any] = field(default_factory=list)  # services with start/stop, in order
    router: RouterService | None = None
    autoscaler: AutoscalerService | None = None
    servers: list[uvicorn.Server] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    ready: bool = False  # every service started

    @property
    def source_pops(self) -> list[str]:
        """The PoPs whose usage the hub sources (none on one NATS server)."""
        topology = self.config.topology
        return [] if topology is None else topology.pop_names

    async def start(self) -> None:
        c = self.config
        p = c.platform
        wanted = set(c.services)
        if "api" in wanted:
            ensure_port_free(c.api_host, c.api_port, "EDGEINFER_API_PORT")
        if "router" in wanted:
            ensure_port_free(c.router.host, c.router.port, "EDGEINFER_ROUTER_PORT")
        if c.health_port is not None:  # first: probes get "starting" while the rest starts
            ensure_port_free(c.health_host, c.health_port, "EDGEINFER_HEALTH_PORT")
            self._serve(health_app(self.why_not_ready, p.metrics_token), c.health_host,
                        c.health_port)
        p.state_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = c.admin_token or load_or_create_secret(p.state_dir / "admin-token")
        subjects = Subjects(p.namespace)
        self.nc = await connect(p.nats_url, name=f"edgeinfer-{'-'.join(c.services)}")
        if wanted != {"router"} and c.create_streams:
            await ensure_platform_streams(self.nc, subjects, self.source_pops, p.stream_replicas)
        if needs_database(c.services):
            applied = await migrate(p.database_url)
            log.info("migrations: %d applied now", len(applied))
            self.pool = await create_pool(p.database_url, max_size=10)

        accounts = registry = metering = billing = None
        if wanted & {"api", "registry"}:
            registry = RegistryService(self.pool, self.nc, subjects, c.pops)
        if wanted & {"api", "metering"}:
            metering = MeteringService(self.pool, self.nc, subjects, c.metering,
                                       source_pops=self.source_pops)
        if wanted & {"api", "billing"}:
            billing = BillingService(self.pool, self.nc, subjects, c.billing)
        if "api" in wanted:
            accounts = AccountsService(self.pool, self.nc, subjects)
        for name, service in (("api", accounts), ("registry", registry), ("metering", metering),
                              ("billing", billing)):
            if name in wanted and service is not None:
                await service.start()
                self.started.append(service)
        if "api" in wanted:
            assert accounts and registry and metering and billing
            resolver = KeyResolver(self.nc, subjects)
            # Persisted, so portal sessions survive a restart; any string, hashed to a key.
            portal_secret = c.billing.portal_secret or load_or_create_secret(
                p.state_dir / "portal-secret")
            self._serve(control_plane_app([
                accounts.admin_router(self.admin_token),
                autoscaler_admin_router(self.nc, subjects, self.admin_token),
                registry.router(resolver),
                metering.router(resolver), metering.admin_router(self.admin_token),
                billing_tenant_router(billing, resolver),
                billing_admin_router(billing, self.admin_token),
                portal_router(billing, resolver, hashlib.sha256(portal_secret.encode()).digest()),
            ], p.metrics_token, lambda: self.pool), c.api_host, c.api_port)
        if "router" in wanted:
            self.router = RouterService(self.nc, subjects, c.router)
            await self.router.start()
            self.started.append(self.router)
            self._serve(self.router.app(p.metrics_token), c.router.host, c.router.port)
        if "autoscaler" in wanted:
            executor = await make_executor(c, p.nats_url)
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
        self.ready = True

    def why_not_ready(self) -> str | None:
        if not self.ready:
            return "starting"
        if self.nc is None or not self.nc.is_connected:
            return "NATS is not connected"
        return None

    def _serve(self, app: Litestar, host: str, port: int) -> None:
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               lifespan="on", access_log=False))
        # The launcher owns signals: uvicorn must not install its own handlers.
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.servers.append(server)
        self.tasks.append(asyncio.create_task(server.serve()))

    async def stop(self) -> None:
        if self.autoscaler is not None:
            await self.autoscaler.stop()  # drains and stops every runner process
        for server in self.servers:
            server.should_exit = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for service in reversed(self.started):
            with contextlib.suppress(Exception):
                await service.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.pool is not None:
            await self.pool.close()


async def make_executor(c: StackConfig, nats_url: str) -> ReplicaExecutor:
    """Local processes (the default), or Kubernetes with EDGEINFER_EXECUTOR=kubernetes."""
    p = c.platform
    if c.executor == "local":
        return LocalProcessExecutor(LocalExecutorConfig(
            nats_url=nats_url, namespace=p.namespace, state_dir=p.state_dir, pops=c.pops,
            gpus=parse_local_gpus(c.local_gpus), supervisor_pid=c.supervisor_pid,
            runner_nats_urls=runner_nats_urls(nats_url, c.nats_credentials, list(c.pops)),
            bind_host=c.runner_bind_host, advertise_host=c.runner_advertise_host))
    from kubernetes_asyncio import config as k8s_config
    from kubernetes_asyncio.client import ApiClient

    from edgeinfer.services.autoscaler.kubernetes import (
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
        namespace_prefix=c.k8s_namespace_prefix, mig_classes=parse_mig_classes(c.k8s_mig_classes),
        nats_secret=c.k8s_nats_secret, artifact_domain=c.k8s_artifact_domain))


def runner_nats_urls(nats_url: str, credentials: Path | None, pops: list[str]) -> dict[str, str]:
    """Each PoP's runner URL: NATS_URL's servers, as `runner-<pop>` (none without users)."""
    if credentials is None:
        return {}
    try:
        passwords = json.loads(credentials.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"EDGEINFER_NATS_CREDENTIALS={credentials}: {e}") from None
    missing = [user_name("runner", pop) for pop in pops if user_name("runner", pop) not in passwords]
    if missing:
        raise ConfigError(f"EDGEINFER_NATS_CREDENTIALS={credentials} has no password for "
                          f"{', '.join(missing)}")
    return {pop: with_user(nats_url, user_name("runner", pop), passwords[user_name("runner", pop)])
            for pop in pops}


def control_plane_app(route_handlers: list[Any], metrics_token: str | None = None,
                      pool: Callable[[], Any] | None = None) -> Litestar:
    @get("/healthz", operation_id="health", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/metrics", operation_id="metrics", tags=["ops"], media_type=CONTENT_TYPE_LATEST,
         guards=[metrics_guard(metrics_token)])
    async def metrics() -> bytes:
        return generate_latest()

    return Litestar(
        route_handlers=[*route_handlers, healthz, metrics],
        exception_handlers=EXCEPTION_HANDLERS,
        logging_config=None,  # the process's (shared/logs.py), not Litestar's
        before_request=refuse_unstorable_text,
        middleware=[idempotency(pool)] if pool is not None else [],
        template_config=TemplateConfig(directory=PORTAL_TEMPLATES, engine=JinjaTemplateEngine),
        openapi_config=OpenAPIConfig(title="edgeinfer", version="0.1.0", path="/schema"),
        on_startup=[document_errors],
    )
