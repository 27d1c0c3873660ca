"""The Kubernetes executor: one Deployment per edgeinfer deployment × PoP, scaled through
its `scale` subresource with kubernetes-asyncio.

Each PoP is a namespace (`<prefix><pop>`); the Deployment runs the same image and command
as the local executor's processes (`edgeinfer run runner`-style: BentoML serving
`services.runner.service:Runner`), with its assignment in the environment and, for GPU
classes, one `nvidia.com/gpu` and a node selector on the class (or, for a class that is a MIG
slice, one `nvidia.com/mig-…` device and its share). Runner pods heartbeat with
their pod name as runner id; the autoscaler pairs them with the replicas it asked for.

The autoscaler asks for one replica more or less at a time; this executor turns that into
the Deployment's replica count. Which pod goes on scale-down is the ReplicaSet's choice;
runners drain on SIGTERM, so no request is lost. `stop_all` leaves the fleet running: an
autoscaler restart must not take every PoP down; `adopt` picks the counts up again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes_asyncio.client import ApiClient, AppsV1Api, V1Deployment
from kubernetes_asyncio.client.exceptions import ApiException

from edgeinfer.services.autoscaler.executor import Replica, deployment_spec
from edgeinfer.shared.config import ConfigError, list_items, split_share
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.topology import Pop

log = logging.getLogger(__name__)

MANAGED = "edgeinfer.io/managed"


@dataclass(frozen=True)
class KubernetesConfig:
    image: str
    nats_url: str
    namespace: str  # edgeinfer's NATS namespace
    pops: dict[str, Pop]
    namespace_prefix: str = "edgeinfer-"
    runner_capacity: int = 8
    drain_timeout_s: int = 20
    extra_env: dict[str, str] = field(default_factory=dict)
    # The Secret in each PoP's namespace whose key `runner` is the runners' NATS_URL (the
    # PoP's NATS, as `runner-<pop>`): a URL with a password never goes in a pod spec.
    # None: `nats_url` as it is.
    nats_secret: str | None = None
    # Where runners read artifacts when not from their own NATS's JetStream (`hub`, for
    # PoPs that are leaf nodes of the hub: docs/topology.md).
    artifact_domain: str | None = None
    # GPU classes served by MIG slices (the device plugin's "mixed" strategy): class → slice.
    mig_classes: dict[str, MigSlice] = field(default_factory=dict)


@dataclass(frozen=True)
class MigSlice:
    resource: str  # e.g. nvidia.com/mig-1g.10gb
    share: Decimal  # of the whole GPU, what the runner charges busy time at


_MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-\d+g\.\d+gb(\.[a-z0-9]+)?$")


def parse_mig_classes(raw: str) -> dict[str, MigSlice]:
    """`EDGEINFER_K8S_MIG_CLASSES`: `<class>=<resource>[@<share>]`, comma-separated, e.g.
    "h100-1g=nvidia.com/mig-1g.10gb@0.142857"."""
    classes: dict[str, MigSlice] = {}
    for item in list_items(raw):
        spec, share = split_share(item, f"EDGEINFER_K8S_MIG_CLASSES {item!r}")
        gpu_class, sep, resource = spec.partition("=")
        if not sep or not gpu_class or gpu_class == "cpu" or not _MIG_RESOURCE.match(resource):
            raise ConfigError(f"EDGEINFER_K8S_MIG_CLASSES: {item!r} must be "
                              "<class>=nvidia.com/mig-<profile>[@<share>], e.g. "
                              "h100-1g=nvidia.com/mig-1g.10gb@0.142857")
        if gpu_class in classes:
            raise ConfigError(f"EDGEINFER_K8S_MIG_CLASSES names {gpu_class!r} twice")
        classes[gpu_class] = MigSlice(resource, share)
    return classes


def object_name(deployment_id: str, pop: str) -> str:
    """A DNS-1123 name for the Deployment of one edgeinfer deployment in one PoP."""
    name = re.sub(r"[^a-z0-9-]", "-", f"ei-{deployment_id}-{pop}".lower()).strip("-")
    return name[:63].rstrip("-")


# What a runner writes, each on a volume of its own (the root filesystem is read-only):
# (env key, path, volume name).
_WRITABLE = (("EDGEINFER_SPOOL_DIR", "/var/lib/edgeinfer/spool", "spool"),
             ("EDGEINFER_ARTIFACT_CACHE", "/var/cache/edgeinfer/artifacts", "artifacts"),
             ("BENTOML_HOME", "/var/lib/edgeinfer/bentoml", "bentoml"),
             ("TMPDIR", "/tmp", "tmp"))


def manifest(d: Deployment, pop: str, config: KubernetesConfig, replicas: int) -> dict[str, Any]:
    """The Deployment object (pure): what `kubectl get -o json` would show us creating."""
    name = object_name(d.id, pop)
    labels = {MANAGED: "true", "edgeinfer.io/deployment": d.id, "edgeinfer.io/pop": pop,
              "app.kubernetes.io/name": "edgeinfer-runner"}
    env = {"EDGEINFER_NAMESPACE": config.namespace,
           "EDGEINFER_POP": pop, "EDGEINFER_REGION": config.pops[pop].region,
           "EDGEINFER_DEPLOYMENT_ID": d.id, "EDGEINFER_MODEL_VERSION": d.model_version,
           "EDGEINFER_ARTIFACT_DIGEST": d.artifact_digest, "EDGEINFER_MODEL_FRAMEWORK": d.framework,
           "EDGEINFER_GPU_CLASS": d.gpu_class, "EDGEINFER_RUNNER_CAPACITY": str(config.runner_capacity),
           "EDGEINFER_DRAIN_TIMEOUT_S": str(config.drain_timeout_s),
           **({"EDGEINFER_ARTIFACT_DOMAIN": config.artifact_domain} if config.artifact_domain
              else {}),
           **{key: path for key, path, _ in _WRITABLE}, **config.extra_env}
    if config.nats_secret is None:
        env["NATS_URL"] = config.nats_url
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if config.nats_secret is not None:
        env_list.insert(0, {"name": "NATS_URL", "valueFrom": {"secretKeyRef": {
            "name": config.nats_secret, "key": "runner"}}})
    env_list += [
        {"name": "EDGEINFER_RUNNER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "EDGEINFER_RUNNER_URL", "value": "http://$(POD_IP):3000"},
    ]
    # A memory limit: a leaking model must not take the node's other runners down with it.
    resources: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"},
                                 "limits": {"memory": "4Gi"}}
    pod_spec: dict[str, Any] = {}
    mig = config.mig_classes.get(d.gpu_class)
    if mig is not None:  # the slice's resource places the pod; its share prices the time
        resources["limits"][mig.resource] = "1"
        env_list.append({"name": "EDGEINFER_GPU_SHARE", "value": str(mig.share)})
    elif d.gpu_class != "cpu":
        resources["limits"]["nvidia.com/gpu"] = "1"  # one runner process per GPU
        pod_spec["nodeSelector"] = {"edgeinfer.io/gpu-class": d.gpu_class}
    if d.gpu_class != "cpu":
        # The device plugin gives the container exactly its device, which CUDA numbers 0
        # there; the runner refuses a GPU class unless CUDA_VISIBLE_DEVICES names one.
        env_list.append({"name": "CUDA_VISIBLE_DEVICES", "value": "0"})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": config.namespace_prefix + pop, "labels": labels},
        "spec": {
            "replicas": replicas,
            # A new model version or GPU class rolls the pods: one new beside the old ones,
            # an old one drained (preStop) once a new one is ready; never fewer than asked.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": {MANAGED: "true", "edgeinfer.io/deployment": d.id,
                                         "edgeinfer.io/pop": pop}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **pod_spec,
                    "terminationGracePeriodSeconds": config.drain_timeout_s + 10,
                    "automountServiceAccountToken": False,  # a runner never calls the API
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "runAsGroup": 10001, "fsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    # The spool outlives a container restart (an emptyDir lives as long as
                    # the pod): a runner that crashed publishes what it had not yet.
                    "volumes": [{"name": volume, "emptyDir": {}} for _, _, volume in _WRITABLE],
                    "containers": [{
                        "name": "runner", "image": config.image,
                        "command": ["edgeinfer", "run", "runner"],
                        "ports": [{"containerPort": 3000, "name": "http"}],
                        "env": env_list, "resources": resources,
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": volume, "mountPath": path}
                                         for _, path, volume in _WRITABLE],
                        # BentoML's own: /livez while the process serves, /readyz once
                        # the model is loaded and warm (and not draining).
                        "startupProbe": {"httpGet": {"path": "/livez", "port": 3000},
                                         "periodSeconds": 2, "failureThreshold": 150},
                        "livenessProbe": {"httpGet": {"path": "/livez", "port": 3000},
                                          "periodSeconds": 10},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 3000},
                                           "periodSeconds": 2},
                        # Drain before SIGTERM (shared/drain.py), as the local executor does.
                        "lifecycle": {"preStop": {"exec": {"command": [
                            "python", "-m", "edgeinfer.shared.drain", "http://127.0.0.1:3000",
                            str(config.drain_timeout_s)]}}},
                    }],
                },
            },
        },
    }


class KubernetesExecutor:
    def __init__(self, api: ApiClient, config: KubernetesConfig) -> None:
        self._apps = AppsV1Api(api)
        self._api = api
        self._config = config
        self._replicas: dict[tuple[str, str], dict[int, Replica]] = {}

    def running(self) -> list[Replica]:
        return [r for slots in self._replicas.values() for r in slots.values()]

    def exited(self) -> list[Replica]:
        return []  # the ReplicaSet replaces crashed pods by itself

    async def start(self, deployment: Deployment, pop: str, slot: int) -> Replica:
        slots = self._replicas.setdefault((deployment.id, pop), {})
        replica = Replica(f"{object_name(deployment.id, pop)}#{slot}", deployment.id, pop, slot, "",
                          deployment_spec(deployment))
        slots[slot] = replica
        await self._scale(deployment, pop, len(slots))
        return replica

    async def stop(self, replica: Replica) -> None:
        slots = self._replicas.get((replica.deployment_id, replica.pop), {})
        if slots.pop(replica.slot, None) is None:
            return
        await self._patch_scale(object_name(replica.deployment_id, replica.pop),
                                self._config.namespace_prefix + replica.pop, len(slots))

    async def roll(self, deployment: Deployment, pop: str) -> bool:
        """Patch the pod template with the deployment's spec: Kubernetes rolls the pods
        (the manifest's RollingUpdate). Adopted replicas have no known spec: patched once
        to be sure (an unchanged template rolls nothing)."""
        slots = self._replicas.get((deployment.id, pop), {})
        spec = deployment_spec(deployment)
        if all(r.spec == spec for r in slots.values()):
            return True
        name, namespace = object_name(deployment.id, pop), self._config.namespace_prefix + pop
        template = manifest(deployment, pop, self._config, len(slots))["spec"]["template"]
        await self._apps.patch_namespaced_deployment(name, namespace, {"spec": {"template": template}})
        log.info("rolling %s/%s to %s", namespace, name, spec)
        self._replicas[(deployment.id, pop)] = {
            i: dataclasses.replace(r, spec=spec) for i, r in slots.items()}
        return True

    async def stop_all(self) -> None:
        """Leave the fleet running (see the module docstring)."""

    async def adopt(self, deployments: list[Deployment]) -> None:
        """Pick up the replica counts of Deployments an earlier autoscaler created."""
        for d in deployments:
            for pop in d.allowed_pops:
                try:
                    scale = await self._apps.read_namespaced_deployment_scale(
                        object_name(d.id, pop), self._config.namespace_prefix + pop)
                except ApiException as exc:
                    if exc.status == 404:
                        continue
                    raise
                count = scale.spec.replicas or 0
                self._replicas[(d.id, pop)] = {
                    i: Replica(f"{object_name(d.id, pop)}#{i}", d.id, pop, i, "") for i in range(count)}

    async def _scale(self, d: Deployment, pop: str, replicas: int) -> None:
        name, namespace = object_name(d.id, pop), self._config.namespace_prefix + pop
        try:
            await self._patch_scale(name, namespace, replicas)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = self._api.deserialize(_Raw(manifest(d, pop, self._config, replicas)), V1Deployment)
            await self._apps.create_namespaced_deployment(namespace, body)
            log.info("created Deployment %s/%s with %d replica(s)", namespace, name, replicas)

    async def _patch_scale(self, name: str, namespace: str, replicas: int) -> None:
        scale = await self._apps.patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}})
        if scale.spec.replicas != replicas:
            raise RuntimeError(f"{namespace}/{name}: asked for {replicas} replicas, the API "
                               f"answered {scale.spec.replicas}")


class _Raw:
    """The shape ApiClient.deserialize reads (a response with `.data` as JSON text)."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj)
