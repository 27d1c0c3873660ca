"""A new model version rolls a deployment's replicas under steady load (the local
executor): a new replica starts beside the old ones, an old one drains once a new one is
ready. No request fails during the rollout, every answer after it comes from the new
version, and the autoscaler's decision log says what it did."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import psutil
import pytest

from edgeinfer.services.registry.demo_model import digits_onnx, sample_digit
from tests.e2e.conftest import Stack, process_env

pytestmark = pytest.mark.e2e


def runner_versions(stack: Stack, deployment_id: str) -> list[str]:
    """The model version of each runner of the deployment: its BentoML arbiter, the one
    process of the group whose parent is not one of them."""
    group = {p.pid: p for p in psutil.Process(stack.process.pid).children(recursive=True)
             if process_env(p).get("EDGEINFER_DEPLOYMENT_ID") == deployment_id}
    roots = []
    for p in group.values():
        try:
            if p.ppid() not in group:
                roots.append(process_env(p).get("EDGEINFER_MODEL_VERSION", "?"))
        except psutil.NoSuchProcess:
            continue
    return sorted(roots)


def test_a_new_version_rolls_the_replicas_with_no_failed_request(stack: Stack) -> None:
    auth = stack.auth()
    version = httpx.put(f"{stack.api}/v1/models/digits/versions/2", content=digits_onnx(),
                        headers={**auth, "Content-Type": "application/octet-stream"}, timeout=60)
    assert version.status_code == 200, version.text
    body = {"model": "digits", "version": "1", "pops": ["eu-west"], "min_replicas": 2,
            "max_replicas": 2}
    created = httpx.put(f"{stack.api}/v1/deployments/rolling", headers=auth, json=body, timeout=30)
    assert created.status_code == 200, created.text
    deployment_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while runner_versions(stack, deployment_id) != ["1", "1"]:
        assert time.monotonic() < deadline, runner_versions(stack, deployment_id)
        time.sleep(0.5)

    answers: list[tuple[float, int, str]] = []  # (when, status, model version)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                resp = http.post(f"{stack.router}/v1/deployments/rolling/infer",
                                 headers={**auth, "X-Client-Region": "eu"},
                                 json={"inputs": [sample_digit(3)]})
                version = resp.json()["usage"]["model_version"] if resp.status_code == 200 else ""
                answers.append((time.monotonic(), resp.status_code, version))
                time.sleep(0.02)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        clients = [pool.submit(client) for _ in range(2)]
        # Served by version 1 for a while first (its replicas may still be loading).
        deadline = time.monotonic() + 120
        while sum(version == "1" for _, _, version in answers) < 20:
            assert time.monotonic() < deadline and not stop.is_set(), answers[-5:]
            time.sleep(0.2)
        updated = httpx.put(f"{stack.api}/v1/deployments/rolling", headers=auth, timeout=30,
                            json={**body, "version": "2"})
        assert updated.status_code == 200, updated.text
        rolled_at = time.monotonic()
        deadline = rolled_at + 180
        while runner_versions(stack, deployment_id) != ["2", "2"]:
            assert time.monotonic() < deadline, runner_versions(stack, deployment_id)
            time.sleep(0.5)
        done_at = time.monotonic()
        time.sleep(3)
        stop.set()
        for c in clients:
            c.result()

    failed = [(round(t - rolled_at, 2), status) for t, status, _ in answers if status != 200]
    assert not failed, failed
    after = [v for t, _, v in answers if t > done_at]
    assert after and set(after) == {"2"}
    assert {v for t, _, v in answers if t < rolled_at} == {"1"}
    decisions = httpx.get(f"{stack.api}/admin/autoscaler/decisions?limit=500", headers={
        "Authorization": f"Bearer {stack.ready['admin_token']}"}, timeout=30).json()["decisions"]
    rolling = [d for d in decisions if d["deployment_id"] == deployment_id and d["rollout"]]
    assert rolling and "rolling out version 2 on cpu" in rolling[0]["rollout"]
    print(f"\nrollout of 2 replicas under load: {len(answers)} requests, all 200; "
          f"{done_at - rolled_at:.1f} s from the PUT to the last old replica gone; "
          f"{len(after)} answers after it, all version 2")
