"""The Kubernetes executor through kubernetes-asyncio against a stand-in of the Deployment
and `scale` endpoints (no API server runs here); the client's models parse every answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import msgspec
import pytest
from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client import ApiClient, Configuration

from edgeinfer.services.autoscaler.kubernetes import (
    KubernetesConfig,
    KubernetesExecutor,
    MigSlice,
    object_name,
    parse_mig_classes,
)
from edgeinfer.shared.config import ConfigError
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.topology import Pop
from tests.standins.kubernetes_api import KubernetesStandIn

POPS = {"eu-west": Pop("eu-west", "eu-west", "eu"), "us-east": Pop("us-east", "us-east", "us")}


def deployment(gpu_class: str = "l40s") -> Deployment:
    return Deployment(id="dep_K8s_1", tenant_id="ten_k", name="k", model_name="m",
                      model_version="3", framework="onnx", artifact_digest="sha256:" + "a" * 64,
                      gpu_class=gpu_class, allowed_pops=["eu-west", "us-east"], min_replicas=0,
                      max_replicas=4)


@pytest.fixture
async def standin() -> AsyncIterator[tuple[KubernetesStandIn, ApiClient]]:
    fake = KubernetesStandIn()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    config = Configuration(host=str(server.make_url("")).rstrip("/"))
    config.client_side_validation = True
    api = ApiClient(config)
    yield fake, api
    await api.close()
    await server.close()


def executor(api: ApiClient, mig_classes: dict[str, MigSlice] | None = None) -> KubernetesExecutor:
    return KubernetesExecutor(api, KubernetesConfig(
        image="registry.example/edgeinfer:0.1.0", nats_url="nats://nats:4222",
        namespace="edgeinfer", pops=POPS, mig_classes=mig_classes or {}))


async def test_replicas_are_one_deployment_per_pop_scaled_through_the_subresource(
        standin: tuple[KubernetesStandIn, ApiClient]) -> None:
    fake, api = standin
    k8s = executor(api)
    d = deployment()
    first = await k8s.start(d, "eu-west", 0)
    await k8s.start(d, "eu-west", 1)
    await k8s.start(d, "us-east", 0)
    name = object_name(d.id, "eu-west")
    assert name == "ei-dep-k8s-1-eu-west"
    eu = fake.deployments[("edgeinfer-eu-west", name)]
    assert eu["spec"]["replicas"] == 2
    pod = eu["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EDGEINFER_ARTIFACT_DIGEST"] == d.artifact_digest and env["EDGEINFER_POP"] == "eu-west"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "4Gi"}  # one per GPU
    assert pod["nodeSelector"] == {"edgeinfer.io/gpu-class": "l40s"}
    # The device plugin's one GPU is device 0 in the container; without it the runner
    # would refuse to start (a GPU class with no visible GPU).
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and "EDGEINFER_GPU_SHARE" not in env
    # Drained before SIGTERM, within the grace period, as the local executor does.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:3] == ["python", "-m", "edgeinfer.shared.drain"]
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[-1])
    assert fake.deployments[("edgeinfer-us-east", object_name(d.id, "us-east"))]["spec"]["replicas"] == 1

    await k8s.stop(first)
    assert eu["spec"]["replicas"] == 1
    assert len(k8s.running()) == 2
    # An autoscaler restart: the fleet keeps running and the counts are adopted.
    await k8s.stop_all()
    assert eu["spec"]["replicas"] == 1
    again = executor(api)
    await again.adopt([d])
    assert sorted((r.pop, r.slot) for r in again.running()) == [("eu-west", 0), ("us-east", 0)]
    assert ("PATCH", f"/apis/apps/v1/namespaces/edgeinfer-eu-west/deployments/{name}/scale") \
        in fake.requests


async def test_a_new_version_patches_the_pod_template_and_kubernetes_rolls_it(
        standin: tuple[KubernetesStandIn, ApiClient]) -> None:
    fake, api = standin
    k8s = executor(api)
    d = deployment()
    for slot in (0, 1):
        await k8s.start(d, "eu-west", slot)
    obj = fake.deployments[("edgeinfer-eu-west", object_name(d.id, "eu-west"))]
    # Surge one, never fewer than asked: the pods roll as the local executor's processes do.
    assert obj["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert await k8s.roll(d, "eu-west") and obj["metadata"]["generation"] == 1  # nothing to do

    newer = msgspec.structs.replace(d, model_version="4", artifact_digest="sha256:" + "b" * 64)
    assert await k8s.roll(newer, "eu-west")
    env = {e["name"]: e.get("value") for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EDGEINFER_MODEL_VERSION"] == "4" and env["EDGEINFER_ARTIFACT_DIGEST"].endswith("b" * 64)
    assert obj["metadata"]["generation"] == 2 and obj["spec"]["replicas"] == 2
    patches = sum(method == "PATCH" and not path.endswith("/scale") for method, path in fake.requests)
    assert await k8s.roll(newer, "eu-west") and patches == 1  # rolled once, not at every tick
    assert sum(method == "PATCH" and not path.endswith("/scale")
               for method, path in fake.requests) == 1


async def test_cpu_deployments_ask_for_no_gpu(standin: tuple[KubernetesStandIn, ApiClient]) -> None:
    fake, api = standin
    await executor(api).start(deployment("cpu"), "us-east", 0)
    (obj,) = fake.deployments.values()
    pod = obj["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "4Gi"} and "nodeSelector" not in pod
    assert "CUDA_VISIBLE_DEVICES" not in {e["name"] for e in pod["containers"][0]["env"]}


async def test_a_mig_class_asks_for_its_slice_and_charges_its_share(
        standin: tuple[KubernetesStandIn, ApiClient]) -> None:
    fake, api = standin
    slices = parse_mig_classes("h100-1g=nvidia.com/mig-1g.10gb@0.142857")
    await executor(api, slices).start(deployment("h100-1g"), "eu-west", 0)
    (obj,) = fake.deployments.values()
    pod = obj["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1", "memory": "4Gi"}
    assert "nodeSelector" not in pod  # the slice resource places the pod
    assert env["EDGEINFER_GPU_SHARE"] == "0.142857" and env["CUDA_VISIBLE_DEVICES"] == "0"


def test_mig_classes_are_validated() -> None:
    assert parse_mig_classes("a100-3g=nvidia.com/mig-3g.40gb, h100-1g=nvidia.com/mig-1g.10gb@0.5") == {
        "a100-3g": MigSlice("nvidia.com/mig-3g.40gb", Decimal(1)),
        "h100-1g": MigSlice("nvidia.com/mig-1g.10gb", Decimal("0.5"))}
    for bad in ("h100-1g", "h100-1g=nvidia.com/gpu", "cpu=nvidia.com/mig-1g.10gb",
                "h100-1g=nvidia.com/mig-1g.10gb@0", "h100-1g=nvidia.com/mig-1g.10gb@2",
                "x=nvidia.com/mig-1g.10gb,x=nvidia.com/mig-2g.20gb"):
        with pytest.raises(ConfigError, match="EDGEINFER_K8S_MIG_CLASSES"):
            parse_mig_classes(bad)
