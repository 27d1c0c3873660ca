"""GPU selection by the local executor: one runner process per device (a GPU or a MIG
slice), CUDA_VISIBLE_DEVICES and the device's share set for it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from edgeinfer.services.autoscaler.local import LocalGpu, NoFreeDevice, assign_device, parse_local_gpus
from edgeinfer.shared.config import ConfigError

MIG = "MIG-4f1c2a9e-7d3b-5e11-9a2c-0b6d8e4f1a20"


def test_parse_local_gpus() -> None:
    assert parse_local_gpus("h100:0, h100:1,l40s:2") == (
        LocalGpu("h100", "0"), LocalGpu("h100", "1"), LocalGpu("l40s", "2"))
    assert parse_local_gpus("") == ()
    for bad in ("h100", "h100:x", ":0", "h100:0,l40s:0", "h100:0;rm -rf", "h100:MIG-"):
        with pytest.raises(ConfigError):
            parse_local_gpus(bad)


def test_mig_slices_carry_their_share() -> None:
    (gpu, old_style) = parse_local_gpus(f"h100-1g:{MIG}@0.142857,a100-3g:MIG-GPU-5a1b/1/0@0.5")
    assert gpu == LocalGpu("h100-1g", MIG, Decimal("0.142857"))
    assert old_style.device == "MIG-GPU-5a1b/1/0" and old_style.share == Decimal("0.5")


@pytest.mark.parametrize("bad", ["h100:0@0.5", f"h100-1g:{MIG}@0", f"h100-1g:{MIG}@1.5",
                                 f"h100-1g:{MIG}@half", f"h100-1g:{MIG}@NaN"])
def test_a_fraction_must_be_a_mig_slice_and_a_share_in_range(bad: str) -> None:
    with pytest.raises(ConfigError, match="EDGEINFER_LOCAL_GPUS"):
        parse_local_gpus(bad)


def test_each_replica_gets_its_own_device_of_the_class() -> None:
    gpus = parse_local_gpus(f"h100:0,l40s:1,h100:2,h100-1g:{MIG}@0.142857")
    assert assign_device("cpu", gpus, set()) is None
    assert assign_device("h100", gpus, set()) == LocalGpu("h100", "0")
    assert assign_device("h100", gpus, {"0"}) == LocalGpu("h100", "2")
    assert assign_device("l40s", gpus, {"0", "2"}) == LocalGpu("l40s", "1")
    assert assign_device("h100-1g", gpus, set()).share == Decimal("0.142857")  # type: ignore[union-attr]
    with pytest.raises(NoFreeDevice, match="no free h100"):
        assign_device("h100", gpus, {"0", "2"})
    with pytest.raises(NoFreeDevice, match="no free h100-1g"):
        assign_device("h100-1g", gpus, {MIG})
