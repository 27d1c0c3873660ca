"""Every NATS subject, stream and bucket name, built in one place.

Subjects follow design.md (most general first: `usage.gpu.<pop>`) behind a namespace
prefix (docs/decisions/0002-namespaced-subjects.md), so the tests and several
installations can share one NATS server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def token(value: str) -> str:
    """A single subject token: refuse anything that could widen a subscription or split a subject."""
    if not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid subject token (letters, digits, '-', '_')")
    return value


@dataclass(frozen=True)
class Subjects:
    namespace: str

    # --- JetStream streams (what must not be lost) ---------------------------------------
    @property
    def usage_stream(self) -> str:
        return f"{self.namespace.upper()}_USAGE"

    def pop_usage_stream(self, pop: str) -> str:
        """A PoP's own usage stream, in its JetStream domain (docs/topology.md)."""
        return f"{self.namespace.upper()}_USAGE_{token(pop).upper().replace('-', '_')}"

    @property
    def usage_wildcard(self) -> str:
        return f"{self.namespace}.usage.gpu.>"

    def usage(self, pop: str) -> str:
        return f"{self.namespace}.usage.gpu.{token(pop)}"

    def delivered(self, pop: str) -> str:
        """A router's delivery confirmations: in the usage streams (the PoP's, then the
        hub's), so they travel the same way as the usage they settle."""
        return f"{self.namespace}.usage.delivered.{token(pop)}"

    @property
    def delivered_wildcard(self) -> str:
        return f"{self.namespace}.usage.delivered.>"

    @property
    def deliveries_consumer(self) -> str:
        return "metering-deliveries"

    @property
    def usage_dead_letter_stream(self) -> str:
        return f"{self.namespace.upper()}_USAGE_DLQ"

    @property
    def usage_dead_letter(self) -> str:
        return f"{self.namespace}.deadletter.usage"

    @property
    def metering_consumer(self) -> str:
        return "metering"

    @property
    def artifact_bucket(self) -> str:
        return f"{self.namespace}_artifacts"

    @property
    def hop_keys_bucket(self) -> str:
        """Routers' public keys for signed hops, by key id (shared/hops.py)."""
        return f"{self.namespace}_hop_keys"

    @property
    def idempotency_bucket(self) -> str:
        """Inference answers kept for their Idempotency-Key, per PoP (router/idempotency.py)."""
        return f"{self.namespace}_idempotency"

    @property
    def keepalive_bucket(self) -> str:
        """The autoscaler's learned keep-alive history per deployment × PoP."""
        return f"{self.namespace}_keepalive"

    # --- core NATS (refreshed continuously) ----------------------------------------------
    def heartbeat(self, pop: str, runner_id: str) -> str:
        return f"{self.namespace}.runner.heartbeat.{token(pop)}.{token(runner_id)}"

    def pop_heartbeats(self, pop: str) -> str:
        """Every runner's heartbeat at one PoP (what a runner there may publish)."""
        return f"{self.namespace}.runner.heartbeat.{token(pop)}.*"

    @property
    def heartbeat_wildcard(self) -> str:
        return f"{self.namespace}.runner.heartbeat.>"

    def decision(self, deployment_id: str, pop: str) -> str:
        return f"{self.namespace}.autoscaler.decision.{token(deployment_id)}.{token(pop)}"

    @property
    def decision_wildcard(self) -> str:
        return f"{self.namespace}.autoscaler.decision.>"

    @property
    def decision_stream(self) -> str:
        return f"{self.namespace.upper()}_DECISIONS"

    def demand(self, deployment_id: str) -> str:
        return f"{self.namespace}.router.demand.{token(deployment_id)}"

    @property
    def demand_wildcard(self) -> str:
        return f"{self.namespace}.router.demand.>"

    @property
    def deployment_updated(self) -> str:
        return f"{self.namespace}.registry.deployment.updated"

    @property
    def key_revoked(self) -> str:
        return f"{self.namespace}.accounts.key.revoked"

    @property
    def tenant_changed(self) -> str:
        return f"{self.namespace}.accounts.tenant.changed"

    @property
    def accounts_wildcard(self) -> str:
        return f"{self.namespace}.accounts.*.*"

    def budget_alert(self, tenant_id: str) -> str:
        return f"{self.namespace}.billing.alert.{token(tenant_id)}"

    def budget(self, tenant_id: str) -> str:
        return f"{self.namespace}.billing.budget.{token(tenant_id)}"

    @property
    def budget_wildcard(self) -> str:
        return f"{self.namespace}.billing.budget.*"

    @property
    def budget_saved(self) -> str:
        """A tenant saved a budget (through the API process): billing evaluates it now."""
        return f"{self.namespace}.billing.budget_saved"

    # --- request/reply between services ----------------------------------------------------
    @property
    def resolve_key(self) -> str:
        return f"{self.namespace}.accounts.rpc.resolve_key"

    @property
    def resolve_deployment(self) -> str:
        return f"{self.namespace}.registry.rpc.resolve_deployment"

    @property
    def list_deployments(self) -> str:
        return f"{self.namespace}.registry.rpc.list_deployments"

    @property
    def reconciliation(self) -> str:
        """Metering's reconciliation report, asked for by the admin API."""
        return f"{self.namespace}.metering.rpc.reconciliation"
