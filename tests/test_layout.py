"""The repository's shape: layering, lint, and a compose file that matches the services."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from edgeinfer.services.launcher.stack import SERVICES

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_services_never_import_each_other() -> None:
    result = run(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    result = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                 "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_compose_runs_exists() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    named: set[str] = set()
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] == ["run"]:
            assert set(command[1:]) <= set(SERVICES), f"{name} runs unknown services {command}"
            named |= set(command[1:])
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).exists()
    assert named == set(SERVICES), f"services without a container: {set(SERVICES) - named}"
    for package in (*SERVICES, "runner"):
        assert (ROOT / "services" / package / "__init__.py").exists()


def test_every_address_in_compose_is_one_its_users_reach() -> None:
    """Read, not run (no Docker daemon here): each NATS_URL and DATABASE_URL names a
    service on a shared network that starts first; each published port is one the
    service binds on all interfaces; the runners the autoscaler starts in its container
    advertise a name the routers' containers resolve, and listen beyond loopback."""
    from urllib.parse import urlsplit

    from edgeinfer.services.launcher.stack import stack_config_from_env
    from edgeinfer.shared.config import platform_from_env

    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]

    def networks(name: str) -> set[str]:
        return set(services[name].get("networks") or ["default"])

    routers = [n for n, s in services.items() if "router" in (s.get("command") or [])[1:]]
    assert routers
    for name, service in services.items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for key in ("NATS_URL", "DATABASE_URL"):
            if key in env:
                host = urlsplit(env[key]).hostname
                assert host in services and networks(host) & networks(name), (name, key, host)
                assert host in (service.get("depends_on") or {}), (name, "must start after", host)
        command = service.get("command") or []
        if command[:1] != ["run"]:
            continue
        config = stack_config_from_env(platform_from_env(env), tuple(command[1:]), env)
        bound = {**({config.api_port: config.api_host} if "api" in command else {}),
                 **({config.router.port: config.router.host} if "router" in command else {})}
        for published in service.get("ports", []):
            container_port = int(str(published).rsplit(":", 1)[1])
            assert bound.get(container_port) == "0.0.0.0", (name, published, bound)
        if "autoscaler" in command and config.executor == "local":
            assert config.runner_advertise_host == name, "runners must advertise their container"
            assert config.runner_bind_host == "0.0.0.0"
            assert all(networks(router) & networks(name) for router in routers)


# Where reading the machine's clocks is the point, not a shortcut past the injected Clock.
CLOCK_EDGES = {
    "services/launcher/cli.py": "the command line: how long `edgeinfer up` took to be ready",
    "services/launcher/supervisor.py": "process supervision: how long a child ran, its backoff",
    "services/autoscaler/local.py": "a timeout while a stopped runner's processes exit",
    "services/sim/main.py": "the command line: how long a replay took",
    "services/runner/device.py": "the CPU timer: the instrument that measures busy time",
    "services/runner/models/cuda_graphs.py": "how long graph capture took at load (a log line)",
    "services/runner/outbox.py": "a spool file's name (ordered across restarts), not a time input",
}


def test_services_read_time_only_through_their_clock() -> None:
    """shared/clock.py is how services learn the time (style.md §2); a direct read outside
    the edges above is a policy or shell that tests cannot freeze."""
    pattern = re.compile(r"\btime\.(time|monotonic|perf_counter)(_ns)?\(|datetime\.now\(")
    found = {str(p.relative_to(ROOT)) for p in (ROOT / "services").rglob("*.py")
             if pattern.search(p.read_text())}
    assert found - set(CLOCK_EDGES) == set(), "read the time through shared.clock.Clock"
    assert found == set(CLOCK_EDGES), f"no longer an edge, drop it from the list: {set(CLOCK_EDGES) - found}"


def test_billing_reads_usage_only_through_metering_view() -> None:
    """docs/decisions/0011: billing never reads metering's tables; metering never billing's."""
    billing = "\n".join(p.read_text() for p in (ROOT / "services" / "billing").rglob("*.py"))
    metering = "\n".join(p.read_text() for p in (ROOT / "services" / "metering").rglob("*.py"))
    assert set(re.findall(r"\bmetering\.[a-z_]+", billing)) <= {"metering.billable_usage_hourly"}
    assert re.findall(r"\bbilling\.[a-z_]+", metering) == []
    # ...and of the registry, metering reads only who owns each deployment.
    assert set(re.findall(r"\bregistry\.[a-z_]+", metering)) <= {"registry.deployment_owners"}


def test_no_class_in_services_reaches_200_lines() -> None:
    """One concern per class: a service class that grows past this wants splitting."""
    import ast

    sizes = sorted(
        ((node.end_lineno or node.lineno) - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}")
        for path in (ROOT / "services").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef))
    assert sizes[-1][0] < 200, sizes[-3:]
