"""`promtool check metrics` on a process's /metrics text (Prometheus's naming lint: base
units, counter suffixes, help text), with Debian's promtool."""

from __future__ import annotations

import subprocess

from tests.debian import debian_program


def lint_problems(text: str) -> str:
    """promtool's complaints about this exposition, "" when it has none."""
    done = subprocess.run([debian_program("promtool", "prometheus"), "check", "metrics"],
                          input=text, capture_output=True, text=True, timeout=60)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip()
