import pytest

from edgeinfer.services.router.admission import Bucket, retry_after_header, take


def test_burst_then_refill_at_rate() -> None:
    bucket = Bucket.full(rate=2.0, burst=3.0, now=0.0)
    waits = []
    for _ in range(4):
        bucket, wait = take(bucket, 0.0)
        waits.append(wait)
    assert waits == [0.0, 0.0, 0.0, pytest.approx(0.5)]
    bucket, wait = take(bucket, 0.5)
    assert wait == 0.0
    bucket, wait = take(bucket, 0.5)
    assert wait == pytest.approx(0.5)


def test_refill_never_exceeds_burst() -> None:
    bucket = Bucket.full(rate=100.0, burst=2.0, now=0.0)
    bucket, _ = take(bucket, 0.0)
    bucket, _ = take(bucket, 3600.0)
    assert bucket.tokens == pytest.approx(1.0)


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2")])
def test_retry_after_rounds_up(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header
