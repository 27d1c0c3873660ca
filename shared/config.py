"""Config parsing: read the environment once at start-up, validate, fail with an actionable error.

Every service has a frozen dataclass built by a `from_env` function that uses the helpers
here; defaults live in that dataclass, and every key is documented in docs/config.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path


class ConfigError(ValueError):
    """A config value is missing or out of range; the message names the key and what is allowed."""


def env_str(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, "").strip()
    return value or default


def env_optional(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


def env_choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(env, key, default)
    if value not in choices:
        raise ConfigError(f"{key} = {value!r}, must be one of {list(choices)}")
    return value


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw not in TRUE + FALSE:
        raise ConfigError(f"{key} = {raw!r}, must be true or false")
    return raw in TRUE


def env_int(env: Mapping[str, str], key: str, default: int, *, lo: int, hi: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} = {raw!r}, must be an integer in [{lo}; {hi}]") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{key} = {value}, must be in [{lo}; {hi}] range")
    return value


def env_float(env: Mapping[str, str], key: str, default: float, *, lo: float, hi: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} = {raw!r}, must be a number in [{lo}; {hi}]") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{key} = {value}, must be in [{lo}; {hi}] range")
    return value


def list_items(raw: str) -> list[str]:
    """The items of a comma-separated setting, blanks and empty items dropped."""
    return [item for item in (part.strip() for part in raw.split(",")) if item]


def split_share(item: str, where: str) -> tuple[str, Decimal]:
    """`<spec>[@<share>]` → the spec and its GPU share (1, a whole device, when none is named)."""
    spec, _, raw_share = item.partition("@")
    return spec, parse_gpu_share(raw_share, where) if raw_share else Decimal(1)


def parse_gpu_share(raw: str, where: str) -> Decimal:
    """A GPU share: the fraction of a device a runner owns, in (0; 1], as a decimal."""
    try:
        share = Decimal(raw.strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: GPU share {raw!r} must be a number in (0; 1]") from None
    if not (share.is_finite() and Decimal(0) < share <= Decimal(1)):
        raise ConfigError(f"{where}: GPU share {share} must be in (0; 1] range")
    return share


_NAMESPACE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class PlatformConfig:
    """What every edgeinfer process needs: where NATS and PostgreSQL are, and its namespace."""

    nats_url: str | None = None
    database_url: str | None = None
    # Prefix of every subject, stream and bucket, so several installations (or test runs)
    # can share one NATS server without seeing each other's events.
    namespace: str = "edgeinfer"
    state_dir: Path = Path(".edgeinfer")
    # Copies of every stream and bucket: 3 on a NATS cluster of three, to outlive a server.
    stream_replicas: int = 1
    # When set, /metrics (api, router) answers only `Authorization: Bearer <token>`: its
    # labels name every deployment.
    metrics_token: str | None = None


def platform_from_env(env: Mapping[str, str] | None = None) -> PlatformConfig:
    env = os.environ if env is None else env
    namespace = env_str(env, "EDGEINFER_NAMESPACE", PlatformConfig.namespace)
    if not _NAMESPACE.match(namespace):
        raise ConfigError(
            f"EDGEINFER_NAMESPACE = {namespace!r}, must match {_NAMESPACE.pattern} "
            "(lower-case letters, digits, underscore; starts with a letter)"
        )
    return PlatformConfig(
        nats_url=env_optional(env, "NATS_URL"),
        database_url=env_optional(env, "DATABASE_URL"),
        namespace=namespace,
        state_dir=Path(env_str(env, "EDGEINFER_STATE_DIR", str(PlatformConfig.state_dir))),
        stream_replicas=env_int(env, "EDGEINFER_STREAM_REPLICAS", PlatformConfig.stream_replicas,
                                lo=1, hi=5),
        metrics_token=env_optional(env, "EDGEINFER_METRICS_TOKEN"),
    )
