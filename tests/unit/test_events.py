"""Event contracts: every golden payload of every version still decodes, and round-trips."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from edgeinfer.shared.events import (
    BudgetAlert,
    BudgetState,
    DemandSignal,
    DeploymentUpdated,
    KeyRevoked,
    RunnerHeartbeat,
    ScalingDecision,
    TenantChanged,
    UsageBatch,
    UsageEvent,
    encode,
    new_id,
    usage_decoder,
)

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
TYPES = {"usage.gpu.v1": UsageEvent, "runner.heartbeat.v1": RunnerHeartbeat,
         "router.demand.v1": DemandSignal, "registry.deployment.updated.v1": DeploymentUpdated,
         "accounts.key.revoked.v1": KeyRevoked, "accounts.tenant.changed.v1": TenantChanged,
         "billing.budget.v1": BudgetState, "usage.gpu.batch.v1": UsageBatch,
         "billing.budget.alert.v1": BudgetAlert, "autoscaler.decision.v1": ScalingDecision}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_golden_payload_decodes_and_round_trips(name: str) -> None:
    raw = (GOLDEN / f"{name}.json").read_bytes()
    event = msgspec.json.decode(raw, type=TYPES[name])
    assert msgspec.json.decode(encode(event), type=TYPES[name]) == event
    assert msgspec.json.decode(encode(event))["type"] == name


def test_every_event_type_has_a_golden_sample() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(TYPES)


def test_usage_event_keeps_exact_numbers() -> None:
    event = usage_decoder.decode((GOLDEN / "usage.gpu.v1.json").read_bytes())
    assert event.gpu_share == Decimal("1") and isinstance(event.gpu_us, int)
    assert b'"gpu_share":"1"' in encode(event)  # Decimal travels as a string, never a float


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param({"gpu_us": 1.5}, id="fractional-microseconds"),
        pytest.param({"gpu_us": "230"}, id="string-microseconds"),
        pytest.param({"type": "usage.gpu.v9"}, id="unknown-version"),
        pytest.param({"tenant_id": None}, id="no-tenant"),
    ],
)
def test_malformed_usage_is_refused(mutation: dict[str, object]) -> None:
    payload = msgspec.json.decode((GOLDEN / "usage.gpu.v1.json").read_bytes())
    payload.update(mutation)
    with pytest.raises(msgspec.ValidationError):
        usage_decoder.decode(msgspec.json.encode(payload))


def test_ids_are_unique_per_occurrence() -> None:
    assert len({new_id() for _ in range(10_000)}) == 10_000


def test_batch_ids_are_stable_and_order_sensitive() -> None:
    from edgeinfer.shared.events import batch_id

    assert batch_id([b"a", b"b"]) == batch_id([b"a", b"b"])
    assert batch_id([b"a", b"b"]) != batch_id([b"b", b"a"])
    assert batch_id([b"a", b"b"]) != batch_id([b"a"])
