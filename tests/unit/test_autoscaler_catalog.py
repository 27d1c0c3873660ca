import msgspec

from edgeinfer.services.autoscaler.catalog import Catalog
from edgeinfer.shared.events import Deployment

BASE = Deployment(id="dep_a", tenant_id="ten_a", name="a", model_name="m", model_version="1",
                  framework="onnx", artifact_digest="sha256:00", gpu_class="cpu",
                  allowed_pops=["eu-west"], min_replicas=0, max_replicas=2)


def dep(revision: int, deployment_id: str = "dep_a", **changes: object) -> Deployment:
    return msgspec.structs.replace(BASE, id=deployment_id, revision=revision, **changes)


def test_it_starts_stale_and_a_list_makes_it_current() -> None:
    catalog = Catalog()
    assert catalog.stale
    catalog.replace_all([dep(3), dep(5, "dep_b")], as_of=7)
    assert not catalog.stale and catalog.last_change == 7
    assert {d.id for d in catalog.deployments} == {"dep_a", "dep_b"}


def test_consecutive_updates_apply_without_a_relist() -> None:
    catalog = Catalog()
    catalog.replace_all([dep(3)], as_of=7)
    catalog.apply(dep(8, max_replicas=4))
    catalog.apply(dep(9, "dep_new"))
    assert not catalog.stale
    assert catalog.get("dep_a").max_replicas == 4  # type: ignore[union-attr]
    assert catalog.get("dep_new") is not None


def test_a_skipped_change_number_marks_it_stale_but_the_update_still_applies() -> None:
    catalog = Catalog()
    catalog.replace_all([dep(3)], as_of=7)
    catalog.apply(dep(9, max_replicas=5))  # 8 never arrived
    assert catalog.stale
    assert catalog.get("dep_a").max_replicas == 5  # type: ignore[union-attr]


def test_an_older_update_never_replaces_a_newer_one() -> None:
    catalog = Catalog()
    catalog.replace_all([dep(3)], as_of=3)
    catalog.apply(dep(5, max_replicas=5))
    catalog.apply(dep(4, max_replicas=9))  # published late by another registry process
    assert catalog.get("dep_a").max_replicas == 5  # type: ignore[union-attr]
    assert catalog.last_change == 5


def test_a_list_older_than_an_update_it_crossed_keeps_the_update() -> None:
    catalog = Catalog()
    catalog.replace_all([dep(3)], as_of=3)
    catalog.apply(dep(9, max_replicas=7))
    catalog.replace_all([dep(3)], as_of=6)  # read before change 9 committed
    assert catalog.get("dep_a").max_replicas == 7  # type: ignore[union-attr]
    assert catalog.last_change == 9


def test_an_update_without_a_change_number_applies_and_asks_for_a_list() -> None:
    catalog = Catalog()
    catalog.replace_all([], as_of=0)
    catalog.apply(dep(0))
    assert catalog.get("dep_a") is not None and catalog.stale
