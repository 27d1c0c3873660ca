"""Where a client is: the edge's trusted header, else the client address in a prefix table.

Pure: the caller passes the header value and the peer address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from edgeinfer.shared.config import ConfigError, list_items

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PrefixTable:
    """Longest prefix first, so a /24 inside a /8 wins."""

    entries: Sequence[tuple[Network, str]]

    def region_of(self, address: str | None) -> str | None:
        if not address:
            return None
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for network, region in self.entries:
            if ip.version == network.version and ip in network:
                return region
        return None


def parse_prefixes(raw: str) -> PrefixTable:
    """`10.1.0.0/16=eu,2001:db8::/32=us` → a table; refuses malformed entries."""
    entries: list[tuple[Network, str]] = []
    for entry in list_items(raw):
        prefix, _, region = entry.partition("=")
        try:
            network = ipaddress.ip_network(prefix.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"EDGEINFER_CLIENT_PREFIXES entry {entry!r}: {prefix!r} "
                              "is not an IP prefix") from None
        if not region.strip():
            raise ConfigError(f"EDGEINFER_CLIENT_PREFIXES entry {entry!r} must be prefix=region")
        entries.append((network, region.strip()))
    entries.sort(key=lambda item: item[0].prefixlen, reverse=True)
    return PrefixTable(entries)


def client_region(header: str | None, address: str | None, prefixes: PrefixTable,
                  default: str) -> str:
    return header or prefixes.region_of(address) or default
