"""The topology description and the nats-server configs made from it (pure)."""

from pathlib import Path

import pytest

from edgeinfer.shared.config import ConfigError
from edgeinfer.shared.nats_topology import hub_server_config, parse_topology, pop_server_config

HUB = "\n".join(f'[[hub]]\nname = "hub-{i}"\nhost = "10.0.0.{i}"\n' for i in (1, 2, 3))
POP = '[[pops]]\nname = "eu-west"\nregion = "eu-west"\njurisdiction = "eu"\nhost = "10.1.0.1"\n'


def test_a_hub_server_routes_to_the_other_two_and_listens_for_leaf_nodes() -> None:
    topology = parse_topology(HUB + POP)
    config = hub_server_config(topology, topology.hub[0], Path("/data/hub-1"))
    assert 'domain: "hub"' in config
    assert 'routes: ["nats-route://10.0.0.2:6222", "nats-route://10.0.0.3:6222"]' in config
    assert 'leafnodes {\n  listen: "10.0.0.1:7422"' in config


def test_a_pop_is_a_leaf_node_of_every_hub_server_with_a_domain_of_its_own() -> None:
    topology = parse_topology(HUB + POP)
    config = pop_server_config(topology, topology.pops[0], Path("/data/pop"))
    assert 'domain: "eu-west"' in config
    assert ('urls: ["nats-leaf://10.0.0.1:7422", "nats-leaf://10.0.0.2:7422",'
            ' "nats-leaf://10.0.0.3:7422"]') in config
    assert topology.pops[0].pop.jurisdiction == "eu"


@pytest.mark.parametrize(("text", "error"), [
    pytest.param(POP, "exactly 3 servers", id="no-hub"),
    pytest.param(HUB, "at least one PoP", id="no-pop"),
    pytest.param(HUB + POP + POP, "same name", id="two-pops-one-name"),
    pytest.param(HUB + POP.replace('"eu-west"\nregion', '"hub"\nregion'), "hub", id="pop-named-hub"),
    pytest.param(HUB + POP.replace('host = "10.1.0.1"', 'host = ""'), "`host` is required",
                 id="no-host"),
    pytest.param(HUB.replace('host = "10.0.0.1"', 'host = "10.0.0.1"\nclient_port = 70000') + POP,
                 "client_port = 70000", id="bad-port"),
    pytest.param(HUB + POP.replace('"eu-west"\nregion', '"eu.west"\nregion'), "subject token",
                 id="a-dot-in-a-name"),
    pytest.param("[[hub", "not valid TOML", id="not-toml"),
])
def test_a_bad_description_is_refused_with_what_to_fix(text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_topology(text)
