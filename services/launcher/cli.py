"""`edgeinfer`: the command line.

    edgeinfer up          the whole platform on this machine, with a demo tenant
    edgeinfer run NAME..  services (api, registry, metering, billing, router, autoscaler; or runner)
    edgeinfer topology render FILE   the hub's and PoPs' NATS configs (docs/topology.md)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import psutil

from edgeinfer.services.launcher.infra import Infrastructure
from edgeinfer.services.launcher.stack import (
    DATABASE_SERVICES,
    SERVICES,
    Stack,
    ensure_port_free,
    needs_database,
    stack_config_from_env,
)
from edgeinfer.services.launcher.supervisor import Child, Supervisor, become_subreaper
from edgeinfer.services.registry.service import RegistryService
from edgeinfer.shared.bus import connect, decode_or_warn, ensure_platform_streams
from edgeinfer.shared.config import ConfigError, platform_from_env
from edgeinfer.shared.events import heartbeat_decoder
from edgeinfer.shared.logs import configure as configure_logs
from edgeinfer.shared.nats_permissions import without_password
from edgeinfer.shared.private_files import load_or_create_secret, write_private
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger("edgeinfer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeinfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole platform here (embedded NATS and PostgreSQL "
                              "unless NATS_URL / DATABASE_URL are set)")
    sub.add_parser("sim", help="replay a trace through the scaling policies (--help for more)",
                   add_help=False)
    sub.add_parser("streams", help="create or update the platform's NATS streams and buckets "
                                   "(once, as the NATS admin, where each service has a user)")
    run = sub.add_parser("run", help="run one service, or several in one process")
    run.add_argument("service", nargs="+", choices=[*SERVICES, "runner"])
    topology = sub.add_parser("topology", help="the distributed layout's NATS configs from one "
                                               "description (docs/topology.md)")
    topology.add_argument("action", choices=["render"], help="write every server's config")
    topology.add_argument("description", type=Path, help="the topology description (TOML)")
    topology.add_argument("--out", type=Path, default=Path("nats-conf"),
                          help="where the configs go, one file per server (default: nats-conf)")
    topology.add_argument("--store-root", type=Path, default=Path("/var/lib/nats"),
                          help="each server's JetStream store is <this>/<server> on its host "
                               "(default: /var/lib/nats)")
    topology.add_argument("--listen-host", default=None,
                          help="the address every server binds, e.g. 0.0.0.0 in a container "
                               "(default: each server's own host)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:
        from edgeinfer.services.sim.main import main as sim

        return sim(argv[1:])
    args = parser.parse_args(argv)
    # Which process a line comes from: under `edgeinfer up` every service logs to one terminal.
    label = "up" if args.command == "up" else "+".join(getattr(args, "service", ["edgeinfer"]))
    try:
        configure_logs(os.environ.get("EDGEINFER_LOG_LEVEL", "INFO"),
                       os.environ.get("EDGEINFER_LOG_FORMAT", "text").strip() or "text", label)
        if args.command == "up":
            return _run(up())
        if args.command == "topology":
            return render_topology(args.description, args.out, args.store_root, args.listen_host)
        if args.command == "streams":
            return _run(create_streams())
        if "runner" in args.service:
            if args.service != ["runner"]:
                parser.error("a runner runs alone: `edgeinfer run runner`")
            # A runner is a BentoML service process of its own; the executor sets its env.
            os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve",
                                      "edgeinfer.services.runner.service:Runner", "--host",
                                      os.environ.get("EDGEINFER_RUNNER_HOST", "0.0.0.0"),
                                      "--port", os.environ.get("EDGEINFER_RUNNER_PORT", "3000")])
        return _run(run_services(tuple(args.service)))
    except ConfigError as exc:
        print(f"edgeinfer: configuration error: {exc}", file=sys.stderr)
        return 2


def render_topology(description: Path, out: Path, store_root: Path,
                    listen_host: str | None = None) -> int:
    """Write every server's config and check each with `nats-server -t`."""
    from edgeinfer.shared.embedded import nats_server_binary
    from edgeinfer.shared.nats_topology import load_topology, render

    if not description.is_file():
        raise ConfigError(f"no topology description at {description}")
    for name, path in render(load_topology(description), out, store_root, listen_host).items():
        if name.startswith("credentials"):
            whose = "every user's" if name == "credentials" else "this host's users'"
            print(f"{name:24s} {path}  ({whose} NATS passwords; mode 0600, keep it secret)")
            continue
        if name.startswith("nats-urls"):
            print(f"{name:24s} {path}  (each role's NATS_URL on this host; mode 0600)")
            continue
        checked = subprocess.run([nats_server_binary(), "-t", "-c", str(path)],
                                 capture_output=True, text=True, timeout=30)
        if checked.returncode != 0:
            print(f"{path}: nats-server refused it: {checked.stderr or checked.stdout}",
                  file=sys.stderr)
            return 1
        print(f"{name:24s} {path}  (checked with nats-server -t)")
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed: the router's hot path is about twice as fast."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def create_streams() -> int:
    """The streams and buckets of NATS_URL's layout (the hub's with EDGEINFER_TOPOLOGY)."""
    platform = platform_from_env()
    if not platform.nats_url:
        raise ConfigError("`edgeinfer streams` needs NATS_URL (as the NATS admin)")
    topology = stack_config_from_env(platform).topology
    pops = [] if topology is None else topology.pop_names
    nc = await connect(platform.nats_url, name="edgeinfer-streams")
    try:
        await ensure_platform_streams(nc, Subjects(platform.namespace), pops,
                                      platform.stream_replicas)
    finally:
        await nc.drain()
    where = f"the hub, sourcing {', '.join(pops)}" if pops else "one NATS"
    print(f"streams and buckets of namespace {platform.namespace!r} are ready ({where})")
    return 0


async def run_services(services: tuple[str, ...]) -> int:
    platform = platform_from_env()
    if not platform.nats_url or (needs_database(services) and not platform.database_url):
        raise ConfigError("`edgeinfer run` needs NATS_URL, and DATABASE_URL for "
                          f"{', '.join(DATABASE_SERVICES)} (use `edgeinfer up` for an embedded "
                          "stack)")
    stack = Stack(stack_config_from_env(platform, services))
    try:
        await stack.start()
        if ready_file := os.environ.get("EDGEINFER_READY_FILE"):
            Path(ready_file).write_text(str(os.getpid()))  # for `edgeinfer up`'s supervisor
        await _until_signalled()
    finally:
        await stack.stop()
    return 0


# Stopped in this order: the autoscaler first, which drains its runners while the router
# still routes to them; the router before the services behind it.
STOP_ORDER = ("autoscaler", "router", "api", "billing", "metering", "registry")


async def up() -> int:
    from edgeinfer.services.launcher.demo import seed
    from edgeinfer.services.registry.demo_model import sample_digit

    started = time.monotonic()
    platform = platform_from_env()
    config = stack_config_from_env(platform)
    ensure_port_free(config.api_host, config.api_port, "EDGEINFER_API_PORT")
    ensure_port_free(config.router.host, config.router.port, "EDGEINFER_ROUTER_PORT")
    platform.state_dir.mkdir(parents=True, exist_ok=True)
    admin_token = config.admin_token or load_or_create_secret(platform.state_dir / "admin-token")
    become_subreaper()
    infra = Infrastructure(platform, pops=sorted(config.pops))
    run_dir = platform.state_dir / "run"
    run_dir.mkdir(exist_ok=True)
    supervisor = Supervisor(
        children=[Child(name, [sys.executable, "-m", "edgeinfer.services.launcher.cli", "run", name],
                        run_dir / f"{name}.ready") for name in SERVICES],
        env={}, status_file=platform.state_dir / "supervisor.json")
    watch: asyncio.Task[None] | None = None
    api_url = f"http://{config.api_host}:{config.api_port}"
    router_url = f"http://{config.router.host}:{config.router.port}"
    try:
        await infra.start()
        supervisor.env = {**os.environ, "NATS_URL": infra.nats_url,
                          "DATABASE_URL": infra.database_url, "EDGEINFER_ADMIN_TOKEN": admin_token,
                          "EDGEINFER_SUPERVISOR_PID": str(os.getpid())}
        if infra.role_urls:  # an embedded NATS, with a user per role: each logs in as its own
            supervisor.env["EDGEINFER_CREATE_STREAMS"] = "false"  # made above, by the admin
            for child in supervisor.children:
                child.env["NATS_URL"] = infra.role_urls[child.name]
            assert infra.nats_credentials is not None
            autoscaler = next(c for c in supervisor.children if c.name == "autoscaler")
            autoscaler.env["EDGEINFER_NATS_CREDENTIALS"] = str(infra.nats_credentials.resolve())
        log.info("starting %s, each in a process of its own", ", ".join(SERVICES))
        await supervisor.start_all(timeout_s=60)
        watch = asyncio.create_task(supervisor.watch(), name="supervisor")
        pops = sorted(config.pops)
        registry = RegistryService(infra.pool, infra.nc, Subjects(platform.namespace), config.pops)
        demo = await seed(infra.pool, registry, platform.state_dir, pops)
        log.info("waiting for the demo runners in %s to be ready", ", ".join(pops))
        await _wait_ready(infra.nc, Subjects(platform.namespace), demo.deployment.id, pops,
                          timeout_s=180, logs=platform.state_dir / "logs")
        ready_s = time.monotonic() - started
        ready_file = platform.state_dir / "ready.json"
        write_private(ready_file, json.dumps({
            "router_url": router_url, "api_url": api_url, "nats_url": infra.nats_url,
            "database_url": infra.database_url, "namespace": platform.namespace,
            "api_key": demo.api_key, "tenant_id": demo.tenant_id,
            "admin_token": admin_token, "deployment": demo.deployment.name,
            "deployment_id": demo.deployment.id, "ready_s": round(ready_s, 2),
            "pid": os.getpid(), "processes": str(supervisor.status_file.resolve())}))
        # The secrets go to a terminal once, never into a file that stdout was sent to.
        on_terminal = sys.stdout.isatty()
        key_file = platform.state_dir / "demo-api-key"
        write_private(key_file, demo.api_key)
        key = demo.api_key if on_terminal else f"$(cat {key_file.resolve()})"
        token = admin_token if on_terminal else f"in {ready_file.resolve()} (mode 0600)"
        body = json.dumps({"inputs": [sample_digit(0)]}, separators=(",", ":"))
        print(banner(ready_s=ready_s, rss_mb=_stack_rss_mb(), router_url=router_url,
                     api_url=api_url, nats_url=nats_for_banner(infra),
                     database_url=infra.database_url,
                     pops=pops, deployment=f"{demo.deployment.name} ({demo.deployment.id})",
                     state=platform.state_dir.resolve(), processes=supervisor.status_file.resolve(),
                     admin_token=token, key=key,
                     infer_url=f"{router_url}/v1/deployments/{demo.deployment.name}/infer",
                     body=body), flush=True)
        await _until_signalled()
        log.info("stopping")
    finally:
        (platform.state_dir / "ready.json").unlink(missing_ok=True)
        await supervisor.stop(list(STOP_ORDER))
        if watch is not None:
            await watch
        await infra.stop()
    return 0


def nats_for_banner(infra: Infrastructure) -> str:
    url = without_password(infra.nats_url)
    if infra.nats_credentials is None:
        return url
    return f"{url}  (a user per service; passwords in {infra.nats_credentials.resolve()})"


def banner(*, ready_s: float, rss_mb: float, router_url: str, api_url: str, nats_url: str,
           database_url: str, pops: list[str], deployment: str, state: Path, processes: Path,
           admin_token: str, key: str, infer_url: str, body: str) -> str:
    auth = f'-H "Authorization: Bearer {key}"'
    return f"""
edgeinfer is up in {ready_s:.1f} s  (stack RSS {rss_mb:.0f} MB)

  router (inference)   {router_url}
  API                  {api_url}      OpenAPI: {api_url}/schema
  NATS                 {nats_url}
  PostgreSQL           {database_url}
  PoPs                 {', '.join(pops)}   demo deployment: {deployment}
  state                {state}
  processes            {processes}  (restarted when they die)
  admin token          {admin_token}

Try it (a handwritten 0 from scikit-learn's digits):

  curl -s {infer_url} {auth} -H 'Content-Type: application/json' -d {shlex.quote(body)}

Then your GPU-seconds, and what they cost:

  curl -s {api_url}/v1/usage {auth}
  curl -s {api_url}/v1/invoices/preview {auth}

or in the billing portal: {api_url}/portal (sign in with the demo API key).

Ctrl-C stops everything.
"""


async def _wait_ready(nc: Any, subjects: Subjects, deployment_id: str, pops: list[str],
                      timeout_s: float, logs: Path) -> None:
    """Until a runner of the deployment says `ready` in each PoP (their heartbeats)."""
    ready: set[str] = set()

    async def on_beat(msg: Any) -> None:
        beat = decode_or_warn(heartbeat_decoder, msg)
        if beat is not None and beat.deployment_id == deployment_id and beat.state == "ready":
            ready.add(beat.pop)

    sub = await nc.subscribe(subjects.heartbeat_wildcard, cb=on_beat)
    try:
        deadline = time.monotonic() + timeout_s
        while not set(pops) <= ready:
            if time.monotonic() > deadline:
                raise RuntimeError(f"runners not ready in {sorted(set(pops) - ready)} after "
                                   f"{timeout_s:.0f} s; see {logs}")
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()


def _stack_rss_mb() -> float:
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


if __name__ == "__main__":
    raise SystemExit(main())
