"""GPU selection by the local executor: one runner process per GPU, CUDA_VISIBLE_DEVICES set."""

from __future__ import annotations

import pytest

from services.autoscaler.local import NoFreeDevice, assign_device, parse_local_gpus
from shared.config import ConfigError


def test_parse_local_gpus() -> None:
    assert parse_local_gpus("h100:0, h100:1,l40s:2") == (("h100", "0"), ("h100", "1"), ("l40s", "2"))
    assert parse_local_gpus("") == ()
    for bad in ("h100", "h100:x", ":0", "h100:0,l40s:0"):
        with pytest.raises(ConfigError):
            parse_local_gpus(bad)


def test_each_replica_gets_its_own_gpu_of_the_class() -> None:
    gpus = parse_local_gpus("h100:0,l40s:1,h100:2")
    assert assign_device("cpu", gpus, set()) == ""
    assert assign_device("h100", gpus, set()) == "0"
    assert assign_device("h100", gpus, {"0"}) == "2"
    assert assign_device("l40s", gpus, {"0", "2"}) == "1"
    with pytest.raises(NoFreeDevice, match="no free h100"):
        assign_device("h100", gpus, {"0", "2"})
