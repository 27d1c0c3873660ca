"""Fixtures of the integration tests: a NATS client of the session's server, and hosts made
of network namespaces (tests/netns.py)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client as NATS

from edgeinfer.shared.bus import connect
from tests.netns import Hosts, require_netns

POPS = ["eu-west", "us-east"]


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await connect(nats_url, "test")
    yield client
    await client.close()


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """A hub host and a host per PoP, each PoP with a client link of its own; deleted after."""
    require_netns()
    hosts = Hosts(net=random.randint(50, 250))
    try:
        hosts.create(POPS)
        for pop in POPS:
            hosts.add_client_link(pop)
        yield hosts
    finally:
        hosts.delete()
