import pytest

from edgeinfer.services.router.location import client_region, parse_prefixes
from edgeinfer.shared.config import ConfigError

TABLE = parse_prefixes("10.0.0.0/8=us,10.1.0.0/16=eu,2001:db8::/32=ap")


@pytest.mark.parametrize(
    ("header", "address", "region"),
    [
        pytest.param("us", "10.1.2.3", "us", id="the-edge-header-wins"),
        pytest.param(None, "10.1.2.3", "eu", id="longest-prefix-wins"),
        pytest.param(None, "10.9.9.9", "us", id="shorter-prefix"),
        pytest.param(None, "2001:db8::1", "ap", id="ipv6"),
        pytest.param(None, "192.0.2.1", "eu-default", id="unknown-address-gets-default"),
        pytest.param(None, "not-an-ip", "eu-default", id="garbage-address"),
        pytest.param(None, None, "eu-default", id="no-address"),
    ],
)
def test_client_region(header: str | None, address: str | None, region: str) -> None:
    assert client_region(header, address, TABLE, "eu-default") == region


@pytest.mark.parametrize("raw", ["10.0.0.0/8", "banana=eu", "10.0.0.0/33=eu"])
def test_malformed_prefixes_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="EDGEINFER_CLIENT_PREFIXES"):
        parse_prefixes(raw)
