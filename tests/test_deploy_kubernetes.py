"""The Kubernetes manifests (deploy/kubernetes, Kustomize): rendered offline with kubectl's
kustomize and validated against the API's schemas for KUBERNETES_VERSION (strict: no
unknown field), with the runner Deployments the autoscaler makes. No cluster runs here:
what only a cluster can show is listed in docs/deploy.md."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeinfer.services.autoscaler.kubernetes import KubernetesConfig, MigSlice, manifest
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.topology import Pop

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent
KUBERNETES_VERSION = "1.33.0"  # docs/deploy.md
LAYOUTS = ["hub", "overlays/eu-west", "overlays/us-east"]
POPS = {"eu-west": Pop("eu-west", "eu-west", "eu"), "us-east": Pop("us-east", "us-east", "us")}


def render(layout: str) -> list[dict[str, Any]]:
    out = subprocess.run([str(BIN / "kubectl"), "kustomize", str(KUSTOMIZE / layout)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {layout: render(layout) for layout in LAYOUTS}


def runner_deployments() -> list[dict[str, Any]]:
    """What the autoscaler creates in a PoP: a GPU, a MIG and a CPU runner."""
    config = KubernetesConfig(image="ghcr.io/edgeinfer/edgeinfer-runner-cuda:0.1.0",
                              nats_url="nats://unused:4222", namespace="edgeinfer", pops=POPS,
                              nats_secret="edgeinfer-nats-urls", artifact_domain="hub",
                              mig_classes={"h100-1g": MigSlice("nvidia.com/mig-1g.10gb",
                                                               Decimal("0.142857"))})
    return [manifest(Deployment(
        id=f"dep_{gpu.replace('-', '')}", tenant_id="ten_a", name="d", model_name="m",
        model_version="1", framework="onnx", artifact_digest="sha256:" + "a" * 64,
        gpu_class=gpu, allowed_pops=["eu-west"], min_replicas=0, max_replicas=2),
        "eu-west", config, 1) for gpu in ("l40s", "h100-1g", "cpu")]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def test_every_rendered_object_passes_strict_validation(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    for name, docs in [*rendered.items(), ("runners", runner_deployments())]:
        path = tmp_path / f"{name.replace('/', '-')}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        checked = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet",
                                  "-k", KUBERNETES_VERSION, str(path)],
                                 capture_output=True, text=True, timeout=300)
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"


def test_every_pod_is_probed_bounded_and_unprivileged(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = [doc for docs in rendered.values() for doc in docs] + runner_deployments()
    specs = dict(pod_specs(docs))
    assert {"Deployment/api", "Deployment/registry", "Deployment/metering", "Deployment/billing",
            "Deployment/autoscaler", "Deployment/router", "StatefulSet/nats"} <= set(specs)
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            assert re.search(r":[\w.-]+$", c["image"]) and not c["image"].endswith(":latest"), where
            assert c["resources"]["requests"] and "memory" in c["resources"]["limits"], where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["readOnlyRootFilesystem"] is True, where
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])}
            if c["name"] == "runner":  # drained before it stops, as the local executor does
                drain = c["lifecycle"]["preStop"]["exec"]["command"][:3]
                assert drain == ["python", "-m", "edgeinfer.shared.drain"]
            for probe in (c.get(kind) for kind in ("startupProbe", "livenessProbe", "readinessProbe")):
                assert probe and probe["httpGet"]["port"] in ports, (where, probe)
            # What a container writes goes to a volume of its own.
            mounted = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])} | {"data"}, where


def test_the_runner_spool_survives_a_container_restart_and_no_password_is_in_a_pod_spec() -> None:
    for d in runner_deployments():
        spec = d["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        spool = env["EDGEINFER_SPOOL_DIR"]["value"]
        mount = next(m for m in container["volumeMounts"] if spool.startswith(m["mountPath"]))
        assert {"name": mount["name"], "emptyDir": {}} in spec["volumes"]  # lives with the pod
        assert env["NATS_URL"] == {"name": "NATS_URL", "valueFrom": {"secretKeyRef": {
            "name": "edgeinfer-nats-urls", "key": "runner"}}}
        assert env["EDGEINFER_ARTIFACT_DOMAIN"]["value"] == "hub"
        assert spec["automountServiceAccountToken"] is False
        assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_autoscaler_may_only_make_and_scale_runner_deployments_in_the_pops(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    everything = [doc for docs in rendered.values() for doc in docs]
    assert not [d for d in everything if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for pop in POPS:
        docs = rendered[f"overlays/{pop}"]
        (role,) = [d for d in docs if d["kind"] == "Role"]
        assert role["metadata"]["namespace"] == f"edgeinfer-{pop}"
        assert role["rules"] == [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]}]
        (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "edgeinfer-autoscaler",
                                        "namespace": "edgeinfer-hub"}]
    hub_specs = dict(pod_specs(rendered["hub"]))
    tokens = [name for name, spec in hub_specs.items() if spec.get("automountServiceAccountToken")]
    assert tokens == ["Deployment/autoscaler"]  # no other pod holds an API credential


def test_runners_are_reachable_only_from_their_pops_routers(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    runner_labels = runner_deployments()[0]["spec"]["template"]["metadata"]["labels"]
    for pop in POPS:
        policies = [d for d in rendered[f"overlays/{pop}"] if d["kind"] == "NetworkPolicy"]
        deny = [p for p in policies if p["spec"]["podSelector"] == {}]
        assert deny and "ingress" not in deny[0]["spec"]  # everything else is refused
        selecting = [p for p in policies if p["spec"]["podSelector"].get("matchLabels", {}).items()
                     <= runner_labels.items() and p["spec"]["podSelector"] != {}]
        (runners,) = selecting
        (rule,) = runners["spec"]["ingress"]
        assert rule["ports"] == [{"port": 3000}]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "edgeinfer-router"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        assert all(p["metadata"]["namespace"] == f"edgeinfer-{pop}" for p in policies)


def test_disruption_budgets_keep_quorum_and_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    budgets = {(layout, d["metadata"]["name"]): d["spec"] for layout, docs in rendered.items()
               for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert budgets[("hub", "nats")] == {"maxUnavailable": 1, "selector": {
        "matchLabels": {"app.kubernetes.io/name": "nats"}}}
    assert {("hub", "api"), ("overlays/eu-west", "router"), ("overlays/eu-west", "runners")} \
        <= set(budgets)


def test_the_manifests_name_only_documented_config_keys_and_their_nats_layout_renders(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    documented = set(re.findall(r"`((?:EDGEINFER|NATS|DATABASE)_[A-Z0-9_]+)`",
                                (ROOT / "docs" / "config.md").read_text()))
    named = set(re.findall(r"\b((?:EDGEINFER|NATS|DATABASE)_[A-Z0-9_]+)\b",
                           "".join(yaml.safe_dump_all(d) for d in rendered.values())))
    assert named - documented == set()
    # The hub's topology: its servers are the StatefulSet's pods, and every config renders.
    from edgeinfer.services.launcher.cli import main

    out = tmp_path / "nats-conf"
    assert main(["topology", "render", str(KUSTOMIZE / "hub" / "topology.toml"), "--out", str(out),
                 "--listen-host", "0.0.0.0", "--store-root", "/data"]) == 0
    (nats,) = [d for d in rendered["hub"] if d["kind"] == "StatefulSet"]
    pods = {f"nats-{i}.conf" for i in range(nats["spec"]["replicas"])}
    assert pods <= {p.name for p in out.iterdir()}
    assert "/etc/nats/$(POD_NAME).conf" in nats["spec"]["template"]["spec"]["containers"][0]["args"]
