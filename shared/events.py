"""Event and message contracts, defined once, versioned, JSON on the wire.

Each event carries `id` (unique per occurrence, never an entity id), `type` with a
version (the msgspec tag), `source`, `time` and, where a tenant owns it, `tenant_id`.
A golden sample of every version lives in tests/golden/ so an old payload always decodes.
Add fields with defaults; anything else is a new version.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec


def batch_id(encoded_events: list[bytes]) -> str:
    """A usage batch's id, from its events as encoded: the same events in the same order
    always give the same id. The outbox republishes a spool's lines byte for byte, so their
    hash is as stable as their ids, and needs no decoding."""
    digest = hashlib.sha256(b"\n".join(encoded_events)).hexdigest()[:32]
    return f"b{digest}"


class _Ids:
    """128-bit ids, 32 hex digits like a UUID's: 64 random bits drawn once per process (and
    again in a forked child) followed by a 64-bit counter from a random start. Unique per
    occurrence like uuid4, at a tenth of its cost: uuid4 reads the kernel's random source
    for every id, which showed up in the runner's per-request profile."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(secrets.randbits(63))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_ids = _Ids()


def new_id() -> str:
    """A unique id per occurrence: the dedup key of every event."""
    return _ids.next()


class UsageEvent(msgspec.Struct, frozen=True, kw_only=True, tag="usage.gpu.v1", tag_field="type"):
    """One request's GPU time, measured by the runner that served it.

    `busy_us` is the device-busy time of the request's share of the work; `gpu_us` is what
    is charged: busy_us × gpu_share, in whole microseconds (runner/accounting.py).
    """

    id: str
    source: str
    time: datetime
    tenant_id: str
    request_id: str
    deployment_id: str
    model_version: str
    runner_id: str
    pop: str
    region: str
    gpu_class: str
    gpu_share: Decimal
    busy_us: int
    gpu_us: int
    started_at: datetime
    ended_at: datetime
    # The W3C trace id of the request (shared/tracing.py), "" from runners before it.
    trace_id: str = ""


class UsageBatch(msgspec.Struct, frozen=True, kw_only=True, tag="usage.gpu.batch.v1",
                 tag_field="type"):
    """Several usage events in one message, each still keyed by its own id in the ledger.

    One message per event caps a Python consumer near 26k events/s (facts.md); a runner's
    outbox publishes what it has spooled in batches. `id` (the Nats-Msg-Id) is derived from
    the events it carries, so a republish of the same batch is dropped by JetStream; a
    differently cut batch is caught by the ledger's unique key.
    """

    id: str
    source: str
    time: datetime
    events: list[UsageEvent]


class Deliveries(msgspec.Struct, frozen=True, kw_only=True, tag="router.delivered.v1",
                 tag_field="type"):
    """A router handed these requests' answers to their clients (docs/billing.md, "Only
    what was delivered"). Batched: one message per flush, not per request. `id` (the
    Nats-Msg-Id) comes from the request ids, so a republished batch is dropped by JetStream;
    metering's table keyed by request id drops any other repeat."""

    id: str
    source: str
    time: datetime
    request_ids: list[str]


RunnerState = Literal["starting", "ready", "draining"]


class RunnerCounters(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative since the runner started; conservation: charged == busy × share, busy ≤ wall."""

    busy_us: int = 0
    charged_us: int = 0
    wall_share_us: int = 0
    requests: int = 0


class RunnerHeartbeat(
    msgspec.Struct, frozen=True, kw_only=True, tag="runner.heartbeat.v1", tag_field="type"
):
    id: str
    source: str
    time: datetime
    runner_id: str
    pop: str
    region: str
    url: str
    state: RunnerState
    gpu_class: str
    gpu_share: Decimal
    device: str
    capacity: int
    in_flight: int
    deployment_id: str
    model_version: str
    counters: RunnerCounters = RunnerCounters()


class DemandSignal(msgspec.Struct, frozen=True, kw_only=True, tag="router.demand.v1", tag_field="type"):
    """The router wants capacity for a deployment: `held_requests` > 0 — none is ready, wake
    it from zero; 0 — it is in use in `pop` (activity, at most once a second); and
    `excess_concurrency` — what it had to refuse at capacity."""

    id: str
    source: str
    time: datetime
    deployment_id: str
    held_requests: int
    # The PoP the router would serve from (the nearest allowed one for the client), so
    # the autoscaler wakes that PoP; "" (older routers) means every allowed PoP.
    pop: str = ""
    # Requests refused because every replica was full, as concurrency (refused per second
    # × mean request time): load that in-flight counts cannot show.
    excess_concurrency: float = 0.0
    # Requests served in `pop` since the router's previous signal for it (activity
    # signals only): the autoscaler's learned keep-alive weighs a cold start by the
    # deployment's mean time between requests.
    requests: int = 0


class ScalingDecision(msgspec.Struct, frozen=True, kw_only=True,
                      tag="autoscaler.decision.v1", tag_field="type"):
    """What the autoscaler decided for one deployment in one PoP, why, and from what."""

    id: str
    source: str
    time: datetime
    deployment_id: str
    pop: str
    desired: int
    start: int
    stop: list[str]
    reason: str
    ready: int
    starting: int
    stable_concurrency: float
    panic_concurrency: float
    schedule_min: int = 0
    keepalive_s: float | None = None
    metrics_ok: bool = True
    placed_in: str = ""  # where the replicas go, when not the PoP itself (capacity spill)
    # A rollout in progress (a new model version or GPU class): its step, "" otherwise.
    rollout: str = ""


class Schedule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Keep `min_replicas` warm in `pop` for `duration_s` from each time `cron` fires in
    `timezone` (shared/schedules.py)."""

    cron: str
    timezone: str
    duration_s: int
    pop: str
    min_replicas: int


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    """What other services need to know of a deployment (registry owns the rest)."""

    id: str
    tenant_id: str
    name: str
    model_name: str
    model_version: str
    framework: str
    artifact_digest: str
    gpu_class: str
    allowed_pops: list[str]
    min_replicas: int
    max_replicas: int
    schedules: list[Schedule] = msgspec.field(default_factory=list)
    # The registry-wide change number of its last change (migrations/registry/0004): a gap
    # between two updates means one was missed. 0 from a registry that predates it.
    revision: int = 0


class DeploymentUpdated(
    msgspec.Struct, frozen=True, kw_only=True, tag="registry.deployment.updated.v1", tag_field="type"
):
    id: str
    source: str
    time: datetime
    tenant_id: str
    deployment: Deployment


# --- request/reply messages --------------------------------------------------------------


class ResolveKeyRequest(msgspec.Struct, frozen=True, kw_only=True):
    key_hash: str


class TenantLimits(msgspec.Struct, frozen=True, kw_only=True):
    rate_limit_rps: float = 100.0
    rate_limit_burst: int = 200
    max_concurrency: int = 64


class ResolveKeyReply(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str | None
    # "active", "unknown" (no such key), "revoked", "suspended"
    status: str
    limits: TenantLimits = TenantLimits()


class KeyRevoked(msgspec.Struct, frozen=True, kw_only=True, tag="accounts.key.revoked.v1",
                 tag_field="type"):
    id: str
    source: str
    time: datetime
    tenant_id: str
    key_hash: str


class TenantChanged(msgspec.Struct, frozen=True, kw_only=True, tag="accounts.tenant.changed.v1",
                    tag_field="type"):
    """A tenant's status or limits changed: caches of its keys are stale."""

    id: str
    source: str
    time: datetime
    tenant_id: str
    status: str
    limits: TenantLimits


class BudgetState(msgspec.Struct, frozen=True, kw_only=True, tag="billing.budget.v1",
                  tag_field="type"):
    """Billing's word on a tenant's spend: `blocked` while a hard stop is in force."""

    id: str
    source: str
    time: datetime
    tenant_id: str
    blocked: bool
    reason: str = ""


class BudgetAlert(msgspec.Struct, frozen=True, kw_only=True, tag="billing.budget.alert.v1",
                  tag_field="type"):
    """A tenant's spend crossed one of its budget thresholds (sent once per threshold and
    month; `metering.budget_alerts` is the durable record)."""

    id: str
    source: str
    time: datetime
    tenant_id: str
    period_start: datetime
    threshold_pct: int
    spend: Decimal
    monthly_limit: Decimal
    currency: str


class ResolveDeploymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    name: str


class ResolveDeploymentReply(msgspec.Struct, frozen=True, kw_only=True):
    deployment: Deployment | None


class ListDeploymentsReply(msgspec.Struct, frozen=True, kw_only=True):
    deployments: list[Deployment]
    # The last change number when the list was read: updates after it follow.
    as_of: int = 0


class RunnerBalanceReport(msgspec.Struct, frozen=True, kw_only=True):
    runner_id: str
    reported_us: int
    ledger_us: int
    difference_us: int
    alert: bool


class ReconciliationReply(msgspec.Struct, frozen=True, kw_only=True):
    grace_s: float
    alerts: int
    runners: list[RunnerBalanceReport]


usage_decoder = msgspec.json.Decoder(UsageEvent)
usage_message_decoder = msgspec.json.Decoder(UsageEvent | UsageBatch)
deliveries_decoder = msgspec.json.Decoder(Deliveries)
accounts_event_decoder = msgspec.json.Decoder(KeyRevoked | TenantChanged)
budget_decoder = msgspec.json.Decoder(BudgetState)
heartbeat_decoder = msgspec.json.Decoder(RunnerHeartbeat)
demand_decoder = msgspec.json.Decoder(DemandSignal)
deployment_updated_decoder = msgspec.json.Decoder(DeploymentUpdated)
encode = msgspec.json.Encoder().encode
