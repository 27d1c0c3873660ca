"""Debian programs some tests drive (Chromium for the portal, Prometheus for the metrics
source): found on PATH, installed with apt-get when missing and we are root, or the test
fails with the exact command to run. So `pytest`, run as the README says on a fresh
machine, sets up what it needs instead of failing on a missing binary."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, env=env,
                          timeout=900, check=False)


def debian_program(program: str, package: str | None = None) -> str:
    """The path of `program`, installing Debian's `package` (default: same name) if needed."""
    package = package or program
    found = shutil.which(program)
    if found:
        return found
    command = f"apt-get update && apt-get install -y {package}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"this test needs Debian's {package} ({program} is not on PATH); "
                    f"install it with: sudo sh -c '{command}'", pytrace=False)
    result = _apt_get("install", "-y", "-q", package)
    if result.returncode != 0:  # a fresh machine's package lists may be empty or stale
        _apt_get("update", "-q")
        result = _apt_get("install", "-y", "-q", package)
    found = shutil.which(program)
    if result.returncode != 0 or found is None:
        pytest.fail(f"installing Debian's {package} failed (exit {result.returncode}): "
                    f"{result.stderr.strip()[-2000:]}\nrun: {command}", pytrace=False)
    return found
