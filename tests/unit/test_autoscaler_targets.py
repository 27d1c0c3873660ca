from services.autoscaler.policy import targets
from shared.events import Deployment


def deployment(min_replicas: int, pops: list[str]) -> Deployment:
    return Deployment(id="dep_a", tenant_id="t", name="a", model_name="m", model_version="1",
                      framework="onnx", artifact_digest="sha256:" + "0" * 64, gpu_class="cpu",
                      allowed_pops=pops, min_replicas=min_replicas, max_replicas=3)


def test_min_replicas_are_kept_in_every_allowed_pop() -> None:
    got = targets([deployment(2, ["eu", "us"])], {}, now=0.0)
    assert [(t.pop, t.replicas, t.reason) for t in got] == [("eu", 2, "min_replicas"),
                                                           ("us", 2, "min_replicas")]


def test_scale_to_zero_deployment_wakes_on_demand_and_sleeps_after_idle() -> None:
    d = deployment(0, ["eu"])
    assert targets([d], {}, now=100.0)[0].replicas == 0
    assert targets([d], {("dep_a", "eu"): 95.0}, now=100.0,
                   scale_to_zero_after_s=10)[0].replicas == 1
    asleep = targets([d], {("dep_a", "eu"): 89.0}, now=100.0, scale_to_zero_after_s=10)[0]
    assert (asleep.replicas, asleep.reason) == (0, "idle")


def test_demand_wakes_only_the_pop_the_router_asked_for() -> None:
    d = deployment(0, ["eu", "us"])
    got = targets([d], {("dep_a", "us"): 99.0}, now=100.0)
    assert [(t.pop, t.replicas) for t in got] == [("eu", 0), ("us", 1)]
    unspecified = targets([d], {("dep_a", ""): 99.0}, now=100.0)
    assert [t.replicas for t in unspecified] == [1, 1]
