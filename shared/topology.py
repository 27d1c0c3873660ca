"""PoPs: where runners run, which region prices them and which jurisdiction they are in.

Configured with EDGEINFER_POPS as `name:region:jurisdiction` entries separated by commas;
the default is two simulated PoPs, one in the EU and one in the US.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from edgeinfer.shared.config import ConfigError
from edgeinfer.shared.subjects import token

DEFAULT_POPS = "eu-west:eu-west:eu,us-east:us-east:us"


@dataclass(frozen=True)
class Pop:
    name: str
    region: str
    jurisdiction: str


def pops_from_env(env: Mapping[str, str] | None = None) -> dict[str, Pop]:
    env = os.environ if env is None else env
    raw = env.get("EDGEINFER_POPS", "").strip() or DEFAULT_POPS
    pops: dict[str, Pop] = {}
    for entry in raw.split(","):
        parts = entry.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"EDGEINFER_POPS entry {entry!r} must be name:region:jurisdiction")
        try:
            name = token(parts[0])
        except ValueError as exc:
            raise ConfigError(f"EDGEINFER_POPS: {exc}") from None
        if name in pops:
            raise ConfigError(f"EDGEINFER_POPS names PoP {name!r} twice")
        pops[name] = Pop(name, parts[1], parts[2])
    return pops
