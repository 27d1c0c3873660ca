"""The package as users get it: one wheel, installed under one name (`edgeinfer`), with
its migrations and templates inside; `edgeinfer up` from a clean virtual environment
with nothing but that wheel and its `local` extra; every dependency pinned in
requirements.lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest

from edgeinfer.shared.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_package_of_the_tree_is_in_the_wheel_list() -> None:
    tree = {"edgeinfer." + str(init.parent.relative_to(ROOT)).replace("/", ".")
            for top in ("services", "shared") for init in (ROOT / top).rglob("__init__.py")}
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == tree | {"edgeinfer.migrations"}


def test_the_lock_pins_every_dependency_the_tests_install() -> None:
    locked = {normalized(line.split("==")[0]) for line in (ROOT / "requirements.lock").read_text()
              .splitlines() if "==" in line and not line.startswith("#")}
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(dep for extra in ("embedded", "demo", "sim", "text", "test")
                                          for dep in project["optional-dependencies"][extra])]
    names = {normalized(re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]) for dep in wanted}
    assert names - {"edgeinfer"} - locked == set(), "add them to requirements.lock"


@pytest.mark.timeout(900)
def test_the_built_wheel_installs_alone_and_runs_up(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("edgeinfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"edgeinfer", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "edgeinfer/migrations/metering/0001_usage_ledger.sql" in names
    assert "edgeinfer/services/billing/templates/invoice.html" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c",
                                str(ROOT / "requirements.lock"), f"{wheel}[local]"],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    generic = subprocess.run([str(venv / "bin" / "python"), "-c", "import services"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert generic.returncode != 0  # nothing generic in site-packages

    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env |= {"EDGEINFER_STATE_DIR": str(state), "EDGEINFER_API_PORT": str(free_port()),
            "EDGEINFER_ROUTER_PORT": str(free_port())}
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([str(venv / "bin" / "edgeinfer"), "up"], env=env, cwd=tmp_path,
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (state / "ready.json").exists():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        ready = json.loads((state / "ready.json").read_text())
        from edgeinfer.services.registry.demo_model import sample_digit

        answer = httpx.post(f"{ready['router_url']}/v1/deployments/digits/infer", timeout=60,
                            headers={"Authorization": f"Bearer {ready['api_key']}"},
                            json={"inputs": [sample_digit(0)]})
        assert answer.status_code == 200, answer.text
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0, log.read_text()[-3000:]
