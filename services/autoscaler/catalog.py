"""The deployments the autoscaler scales, kept from the registry's updates — pure.

The registry publishes every change on core NATS with a registry-wide change number
(`Deployment.revision`, migrations/registry/0004). The catalog applies each update as it
arrives, ignores one older than what it holds (two registries may publish out of order),
and marks itself stale when a number was skipped: core NATS does not redeliver, so a gap
is a missed update, and only a full list heals it. It also starts stale: the first list
comes on start. Worked example: listed as of 7; updates 8 and 9 apply; 11 applies too,
but 10 was skipped, so the catalog is stale until the next list.
(tests/unit/test_autoscaler_catalog.py)
"""

from __future__ import annotations

from collections.abc import Iterable

from edgeinfer.shared.events import Deployment


class Catalog:
    def __init__(self) -> None:
        self._by_id: dict[str, Deployment] = {}
        self.last_change = 0
        self.stale = True  # nothing listed yet

    @property
    def deployments(self) -> list[Deployment]:
        return list(self._by_id.values())

    def get(self, deployment_id: str) -> Deployment | None:
        return self._by_id.get(deployment_id)

    def replace_all(self, deployments: Iterable[Deployment], as_of: int) -> None:
        """A full list from the registry, read when its change number was `as_of`. Updates
        that arrived while it was on its way and are newer than what it says are kept."""
        listed = {d.id: d for d in deployments}
        for d in self._by_id.values():
            newer = listed.get(d.id)
            if d.revision > as_of and (newer is None or d.revision > newer.revision):
                listed[d.id] = d
        self._by_id = listed
        self.last_change = max(self.last_change, as_of)
        self.stale = False

    def apply(self, deployment: Deployment) -> None:
        """One `registry.deployment.updated`."""
        revision = deployment.revision
        known = self._by_id.get(deployment.id)
        if revision == 0:  # a registry without change numbers: trust the update, re-list
            self._by_id[deployment.id] = deployment
            self.stale = True
            return
        if revision > self.last_change + 1:
            self.stale = True  # at least one change between them never reached us
        if known is None or revision > known.revision:
            self._by_id[deployment.id] = deployment
        self.last_change = max(self.last_change, revision)
