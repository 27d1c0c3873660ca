"""Hosts for the distributed tests, made of Linux network namespaces (iproute2; root only).

One `hub` namespace holds a bridge that every other host's link plugs into, so each host
has one address on one subnet (10.213.<net>.0/24, made and deleted by the test itself):
the hub at .1, PoPs from .11, and the test's own end (the machine's root namespace) at
.100, from which it reaches the hub's NATS and the PoPs. A PoP may also get a client link
(10.214.<net>.<4i>/30), straight from the test's end, which a cut does not touch. A PoP is cut from the hub by
taking its link down (`tc netem` is not in this kernel: no added delay, only cuts).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def require_netns() -> None:
    """Skip, saying why, where this machine cannot make network namespaces."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's `ip` (Debian: apt-get install iproute2)")
    probe = f"eiprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create network namespaces here ({made.stderr.strip()}): "
                    "the distributed tests need root and `ip netns`")
    _ip("netns", "del", probe, check=False)


@dataclass
class Hosts:
    net: int  # the third octet of 10.213.<net>.0/24
    prefix: str = field(default_factory=lambda: "ei" + secrets.token_hex(3))
    pops: dict[str, str] = field(default_factory=dict)  # PoP → its address
    clients: dict[str, str] = field(default_factory=dict)  # PoP → its address on the client link
    _links: dict[str, tuple[str, str]] = field(default_factory=dict)  # PoP → (netns, device)

    @property
    def hub_ns(self) -> str:
        return f"{self.prefix}-hub"

    @property
    def hub_address(self) -> str:
        return f"10.213.{self.net}.1"

    def ns(self, pop: str) -> str:
        return f"{self.prefix}-{pop}"

    def create(self, pops: list[str]) -> None:
        _ip("netns", "add", self.hub_ns)
        _ip("-n", self.hub_ns, "link", "set", "lo", "up")
        _ip("-n", self.hub_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub_ns, "addr", "add", f"{self.hub_address}/24", "dev", "br0")
        _ip("-n", self.hub_ns, "link", "set", "br0", "up")
        # The test's own end, in the root namespace.
        self._plug(None, f"{self.prefix}r", f"10.213.{self.net}.100")
        for i, pop in enumerate(pops):
            ns = self.ns(pop)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            address = f"10.213.{self.net}.{11 + i}"
            self._plug(ns, f"{self.prefix}p{i}", address)
            self.pops[pop] = address
            self._links[pop] = (ns, f"{self.prefix}p{i}")

    def add_client_link(self, pop: str) -> str:
        """A second link, from the test's end straight to the PoP, for its clients: cutting
        the PoP from the hub leaves its clients able to reach it. Returns its address."""
        i = list(self.pops).index(pop)
        name, peer = f"{self.prefix}c{i}", f"{self.prefix}c{i}p"
        _ip("link", "add", name, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.ns(pop))
        _ip("addr", "add", f"10.214.{self.net}.{4 * i + 1}/30", "dev", name)
        _ip("link", "set", name, "up")
        address = f"10.214.{self.net}.{4 * i + 2}"
        _ip("-n", self.ns(pop), "addr", "add", f"{address}/30", "dev", peer)
        _ip("-n", self.ns(pop), "link", "set", peer, "up")
        self.clients[pop] = address
        return address

    def _plug(self, ns: str | None, name: str, address: str) -> None:
        """A veth pair: `name` in `ns` (None: here) with `address`, its peer on the bridge."""
        peer = name + "b"
        _ip("link", "add", name, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.hub_ns)
        _ip("-n", self.hub_ns, "link", "set", peer, "master", "br0")
        _ip("-n", self.hub_ns, "link", "set", peer, "up")
        if ns is not None:
            _ip("link", "set", name, "netns", ns)
        where = ["-n", ns] if ns is not None else []
        _ip(*where, "addr", "add", f"{address}/24", "dev", name)
        _ip(*where, "link", "set", name, "up")

    def cut(self, pop: str) -> None:
        ns, device = self._links[pop]
        _ip("-n", ns, "link", "set", device, "down")

    def heal(self, pop: str) -> None:
        ns, device = self._links[pop]
        _ip("-n", ns, "link", "set", device, "up")

    def tx_bytes(self, pop: str) -> int:
        """Bytes the PoP has sent towards the hub over its link (the WAN, here)."""
        ns, device = self._links[pop]
        out = subprocess.run(["ip", "netns", "exec", ns, "cat",
                              f"/sys/class/net/{device}/statistics/tx_bytes"],
                             capture_output=True, text=True, timeout=10, check=True)
        return int(out.stdout)

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def delete(self) -> None:
        """Deleting a namespace deletes its links; the root end goes with its peer."""
        for ns in [*(self.ns(p) for p in self.pops), self.hub_ns]:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", f"{self.prefix}r", check=False)
        for i in range(len(self.pops)):
            _ip("link", "del", f"{self.prefix}c{i}", check=False)
