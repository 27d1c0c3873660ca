"""The repository's shape: layering, lint, and a compose file that matches the services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from services.launcher.stack import SERVICES

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
