"""The demo tenant `edgeinfer up` seeds: an API key and the digits classifier in every PoP."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.services.api import repository as accounts
from edgeinfer.services.registry.demo_model import digits_onnx
from edgeinfer.services.registry.service import DeploymentSpec, RegistryService
from edgeinfer.shared.auth import hash_api_key
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.http import Refusal

log = logging.getLogger("edgeinfer")


@dataclass(frozen=True)
class Demo:
    tenant_id: str
    api_key: str
    deployment: Deployment


async def seed(pool: object, registry: RegistryService, state_dir: Path,
               pops: list[str]) -> Demo:
    """Idempotent: a second `up` reuses the tenant and key it saved in the state directory."""
    saved = state_dir / "demo.json"
    tenant_id = key = None
    if saved.exists():
        data = json.loads(saved.read_text())
        found = await accounts.resolve_key_hash(pool, hash_api_key(data["api_key"]))  # type: ignore[arg-type]
        if found.status == "active" and found.tenant_id == data["tenant_id"]:
            tenant_id, key = data["tenant_id"], data["api_key"]
    if tenant_id is None or key is None:
        tenant = await accounts.create_tenant(pool, "demo")  # type: ignore[arg-type]
        issued = await accounts.issue_key(pool, tenant.id, "edgeinfer up demo")  # type: ignore[arg-type]
        tenant_id, key = tenant.id, issued.key
        saved.touch(mode=0o600)
        saved.write_text(json.dumps({"tenant_id": tenant_id, "api_key": key}))
    try:
        await registry.register_version(tenant_id, "digits", "1", digits_onnx())
    except Refusal as exc:
        if exc.code != "version_exists":
            raise
    deployment = await registry.deploy(tenant_id, "digits", DeploymentSpec(
        model="digits", version="1", pops=pops, gpu_class="cpu", min_replicas=1, max_replicas=2))
    return Demo(tenant_id, key, deployment)
