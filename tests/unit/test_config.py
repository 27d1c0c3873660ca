import pytest

from edgeinfer.services.router.config import parse_latency_map
from edgeinfer.shared.config import ConfigError, platform_from_env
from edgeinfer.shared.subjects import Subjects
from edgeinfer.shared.topology import pops_from_env


def test_defaults_need_no_environment() -> None:
    config = platform_from_env({})
    assert config.namespace == "edgeinfer" and config.nats_url is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"EDGEINFER_NAMESPACE": "Bad.Name"}, "EDGEINFER_NAMESPACE", id="namespace"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        platform_from_env(env)


def test_pops_parse_and_refuse_malformed_entries() -> None:
    pops = pops_from_env({"EDGEINFER_POPS": "fra:eu-central:eu,iad:us-east:us"})
    assert pops["fra"].jurisdiction == "eu"
    with pytest.raises(ConfigError, match="name:region:jurisdiction"):
        pops_from_env({"EDGEINFER_POPS": "fra:eu"})
    with pytest.raises(ConfigError, match="twice"):
        pops_from_env({"EDGEINFER_POPS": "a:b:c,a:b:c"})


def test_latency_map() -> None:
    assert parse_latency_map("eu>eu-west=8,eu>us-east=80") == {"eu": {"eu-west": 8, "us-east": 80}}
    with pytest.raises(ConfigError):
        parse_latency_map("eu-west=8")


def test_subjects_refuse_tokens_that_would_widen_a_subscription() -> None:
    s = Subjects("edgeinfer")
    assert s.usage("eu-west") == "edgeinfer.usage.gpu.eu-west"
    for bad in ["eu.west", "*", ">", ""]:
        with pytest.raises(ValueError):
            s.usage(bad)
