"""A stand-in for the few Kubernetes API endpoints the executor uses (no API server can
run here): Deployments and their `scale` subresource, answering with the same JSON shapes
the API server does, so kubernetes-asyncio's own models validate every response.
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

PATCH_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json",
               "application/json-patch+json", "application/apply-patch+yaml"}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                              "status": "Failure", "message": message, "reason": reason,
                              "code": code}, status=code)


class KubernetesStandIn:
    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.app = web.Application(middlewares=[self._record])
        base = "/apis/apps/v1/namespaces/{ns}/deployments"
        self.app.router.add_post(base, self.create)
        self.app.router.add_get(base + "/{name}", self.get)
        self.app.router.add_patch(base + "/{name}", self.patch)
        self.app.router.add_get(base + "/{name}/scale", self.get_scale)
        self.app.router.add_patch(base + "/{name}/scale", self.patch_scale)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    async def create(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await request.json()
        name = body.get("metadata", {}).get("name")
        if body.get("kind") != "Deployment" or not name:
            return _status(400, "BadRequest", "a Deployment with metadata.name is required")
        if body["metadata"].get("namespace", ns) != ns:
            return _status(400, "BadRequest", "namespace mismatch")
        if (ns, name) in self.deployments:
            return _status(409, "AlreadyExists", f'deployments.apps "{name}" already exists')
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                               generation=1, creationTimestamp=datetime.now(UTC).strftime(
                                   "%Y-%m-%dT%H:%M:%SZ"))
        obj["status"] = {"observedGeneration": 1, "replicas": 0}
        self.deployments[(ns, name)] = obj
        return web.json_response(obj, status=201)

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return self.deployments.get((request.match_info["ns"], request.match_info["name"]))

    async def get(self, request: web.Request) -> web.Response:
        obj = self._find(request)
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        return web.json_response(obj)

    def _scale(self, obj: dict[str, Any]) -> dict[str, Any]:
        labels = obj["spec"]["selector"]["matchLabels"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": obj["metadata"]["name"],
                             "namespace": obj["metadata"]["namespace"],
                             "uid": obj["metadata"]["uid"],
                             "resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"replicas": obj["spec"]["replicas"]},
                "status": {"replicas": obj["status"]["replicas"],
                           "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}

    async def get_scale(self, request: web.Request) -> web.Response:
        obj = self._find(request)
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        return web.json_response(self._scale(obj))

    async def patch_scale(self, request: web.Request) -> web.Response:
        obj = self._find(request)
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        if request.content_type not in PATCH_TYPES:
            return _status(415, "UnsupportedMediaType", f"{request.content_type} is not a patch type")
        patch = await request.json()
        replicas = patch.get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return _status(422, "Invalid", "spec.replicas must be a non-negative integer")
        obj["spec"]["replicas"] = replicas
        obj["status"]["replicas"] = replicas  # the stand-in's pods come up at once
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return web.json_response(self._scale(obj))

    async def patch(self, request: web.Request) -> web.Response:
        """A merge patch of the Deployment (objects merged, anything else replaced): a
        changed pod template bumps the generation, which is what starts a rollout."""
        obj = self._find(request)
        if obj is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        if request.content_type not in PATCH_TYPES - {"application/json-patch+json"}:
            return _status(415, "UnsupportedMediaType", f"{request.content_type} is not a merge patch")
        before = copy.deepcopy(obj["spec"]["template"])
        _merge(obj, await request.json())
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        if obj["spec"]["template"] != before:
            obj["metadata"]["generation"] += 1
        return web.json_response(obj)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
