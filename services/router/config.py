"""Router config (docs/config.md lists every key)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from edgeinfer.services.router.location import PrefixTable, parse_prefixes
from edgeinfer.shared.config import ConfigError, env_float, env_int, env_str, list_items

# client region → PoP → round-trip ms. In production this is fed by measurements.
DEFAULT_LATENCY_MAP = "eu>eu-west=8,eu>us-east=85,us>us-east=8,us>eu-west=85"


def parse_latency_map(raw: str) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for entry in list_items(raw):
        route, _, ms = entry.partition("=")
        region, _, pop = route.partition(">")
        try:
            value = float(ms)
        except ValueError:
            value = -1.0
        if not region or not pop or value < 0:
            raise ConfigError(
                f"EDGEINFER_LATENCY_MAP entry {entry!r} must be client_region>pop=milliseconds")
        table.setdefault(region, {})[pop] = value
    return table


@dataclass(frozen=True)
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    latency_ms: dict[str, dict[str, float]] = field(
        default_factory=lambda: parse_latency_map(DEFAULT_LATENCY_MAP))
    # Set by the edge in front of the router; trusted because only the edge can reach us.
    client_region_header: str = "x-client-region"
    default_client_region: str = "eu"
    client_prefixes: PrefixTable = field(default_factory=lambda: PrefixTable(()))
    max_body_bytes: int = 1024 * 1024
    forward_timeout_s: float = 30.0
    deployment_cache_s: float = 5.0
    # How long keys and deployments seen here keep their last answer while the accounts
    # service and the registry cannot be reached (a PoP cut from the hub, NATS down): long
    # enough to ride out link flaps and most WAN incidents (minutes), short enough that a
    # revocation that cannot reach this PoP is ignored for five minutes at most.
    cache_stale_s: float = 300.0
    # How long a request waits for a cold start unless it sends X-Scale-Up-Timeout.
    scale_up_timeout_s: float = 60.0
    max_scale_up_timeout_s: float = 300.0
    # How long a request waits for a slot when every allowed replica is full, unless it
    # sends X-Queue-Timeout (0: refuse at once); and how many may wait per deployment.
    queue_timeout_s: float = 10.0
    max_queue_timeout_s: float = 120.0
    queue_max: int = 1000
    # The PoP this router serves from: its delivery confirmations go to
    # `<ns>.usage.delivered.<pop>`, which that PoP's usage stream stores.
    pop: str = "local"
    # How often delivered requests are confirmed (one message per flush): also the most
    # traffic whose billing a router crash can lose (docs/billing.md).
    delivery_flush_s: float = 0.2

    @property
    def claim_abandoned_s(self) -> float:
        """An Idempotency-Key claim older than any request can run: its router died."""
        return self.forward_timeout_s + self.max_scale_up_timeout_s + 10


def router_config_from_env(env: Mapping[str, str] | None = None) -> RouterConfig:
    env = os.environ if env is None else env
    return RouterConfig(
        host=env_str(env, "EDGEINFER_ROUTER_HOST", RouterConfig.host),
        port=env_int(env, "EDGEINFER_ROUTER_PORT", RouterConfig.port, lo=1, hi=65535),
        latency_ms=parse_latency_map(env_str(env, "EDGEINFER_LATENCY_MAP", DEFAULT_LATENCY_MAP)),
        client_region_header=env_str(env, "EDGEINFER_CLIENT_REGION_HEADER",
                                     RouterConfig.client_region_header).lower(),
        default_client_region=env_str(env, "EDGEINFER_DEFAULT_CLIENT_REGION",
                                      RouterConfig.default_client_region),
        client_prefixes=parse_prefixes(env_str(env, "EDGEINFER_CLIENT_PREFIXES", "")),
        max_body_bytes=env_int(env, "EDGEINFER_MAX_BODY_BYTES", RouterConfig.max_body_bytes,
                               lo=1024, hi=256 * 1024 * 1024),
        forward_timeout_s=env_float(env, "EDGEINFER_FORWARD_TIMEOUT_S",
                                    RouterConfig.forward_timeout_s, lo=0.1, hi=600),
        scale_up_timeout_s=env_float(env, "EDGEINFER_SCALE_UP_TIMEOUT_S",
                                     RouterConfig.scale_up_timeout_s, lo=0, hi=3600),
        queue_timeout_s=env_float(env, "EDGEINFER_QUEUE_TIMEOUT_S", RouterConfig.queue_timeout_s,
                                  lo=0, hi=RouterConfig.max_queue_timeout_s),
        queue_max=env_int(env, "EDGEINFER_QUEUE_MAX", RouterConfig.queue_max, lo=0, hi=1_000_000),
        cache_stale_s=env_float(env, "EDGEINFER_CACHE_STALE_S", RouterConfig.cache_stale_s,
                                lo=0, hi=7 * 86400),
        pop=env_str(env, "EDGEINFER_ROUTER_POP", RouterConfig.pop),
        delivery_flush_s=env_float(env, "EDGEINFER_DELIVERY_FLUSH_S",
                                   RouterConfig.delivery_flush_s, lo=0.01, hi=60),
    )
