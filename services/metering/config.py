"""Metering's settings, read once at start (docs/config.md lists every key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeinfer.shared.config import env_float, env_int


@dataclass(frozen=True)
class ConsumerConfig:
    batch_size: int = 250  # messages; a runner batch carries up to 64 events
    writers: int = 2  # batches written at once, each on its own connection
    fetch_timeout_s: float = 1.0
    # How long JetStream waits for an ack before redelivering (after a consumer crash).
    ack_wait_s: float = 60.0


@dataclass(frozen=True)
class MeteringConfig:
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    # A runner's reported charges may trail the ledger this long (an outbox draining, events
    # in flight) before reconciliation raises an alert.
    reconcile_grace_s: float = 120.0
    reconcile_interval_s: float = 5.0
    # A usage event no router has confirmed as delivered this long after it reached the
    # ledger is marked `undelivered` (not billed). Routers confirm within a fraction of a
    # second; the grace covers their NATS being away for a while.
    delivery_grace_s: float = 120.0
    settle_interval_s: float = 1.0


def consumer_config_from_env(env: Mapping[str, str]) -> ConsumerConfig:
    return ConsumerConfig(
        batch_size=env_int(env, "EDGEINFER_USAGE_BATCH", ConsumerConfig.batch_size, lo=1, hi=50_000),
        writers=env_int(env, "EDGEINFER_USAGE_WRITERS", ConsumerConfig.writers, lo=1, hi=16),
        ack_wait_s=env_float(env, "EDGEINFER_USAGE_ACK_WAIT_S", ConsumerConfig.ack_wait_s,
                             lo=1, hi=3600),
    )


def metering_config_from_env(env: Mapping[str, str]) -> MeteringConfig:
    return MeteringConfig(
        consumer=consumer_config_from_env(env),
        reconcile_grace_s=env_float(env, "EDGEINFER_RECONCILE_GRACE_S",
                                    MeteringConfig.reconcile_grace_s, lo=1, hi=86400),
        delivery_grace_s=env_float(env, "EDGEINFER_DELIVERY_GRACE_S",
                                   MeteringConfig.delivery_grace_s, lo=0, hi=7 * 86400),
        settle_interval_s=env_float(env, "EDGEINFER_SETTLE_INTERVAL_S",
                                    MeteringConfig.settle_interval_s, lo=0.05, hi=3600),
    )
