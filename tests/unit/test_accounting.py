from decimal import Decimal

import pytest

from edgeinfer.services.runner.accounting import Ledger, split_batch


@pytest.mark.parametrize(
    ("share", "busy", "charges"),
    [
        pytest.param("1", [5, 7, 11], [5, 7, 11], id="whole-gpu-charges-busy-time"),
        pytest.param("0.5", [3, 3, 3], [1, 2, 1], id="half-share-telescopes"),
        pytest.param("0.25", [1, 1, 1, 1], [0, 0, 0, 1], id="quarter-share-sub-microsecond"),
        pytest.param("1", [0], [0], id="zero-busy-is-free"),
    ],
)
def test_charges_telescope_to_share_times_busy(share: str, busy: list[int], charges: list[int]) -> None:
    ledger = Ledger(share=Decimal(share))
    got = []
    for b in busy:
        ledger, c = ledger.charge(b)
        got.append(c)
    assert got == charges
    assert ledger.charged_us == int(Decimal(share) * sum(busy))
    assert ledger.busy_us == sum(busy)


def test_split_batch_adds_up_exactly_with_largest_remainder() -> None:
    assert split_batch(10, [1, 1, 1]) == [4, 3, 3]
    assert split_batch(100, [3, 1]) == [75, 25]
    assert split_batch(7, [2, 2, 3]) == [2, 2, 3]
    assert sum(split_batch(1_000_003, [17, 5, 9, 1])) == 1_000_003


@pytest.mark.parametrize("weights", [[], [0, 1], [-1]])
def test_split_batch_refuses_empty_or_non_positive_work(weights: list[int]) -> None:
    with pytest.raises(ValueError):
        split_batch(10, weights)


@pytest.mark.parametrize("share", ["1", "0.5", "0.3333", "0.125", "0.07"])
def test_conservation_over_random_request_mixes_and_batchings(share: str) -> None:
    """Σ charged = floor(share × Σ busy) after every request, whatever the batching; each
    batch's parts add up to the batch; nothing is charged more than its share + 1 µs."""
    import random

    rng = random.Random(share)
    ledger = Ledger(share=Decimal(share))
    charged_sum = busy_sum = 0
    for _ in range(500):
        batch_busy = rng.choice([0, 1, 7, rng.randint(1, 50_000)])
        weights = [rng.randint(1, 512) for _ in range(rng.randint(1, 16))]  # items or tokens
        parts = split_batch(batch_busy, weights)
        assert sum(parts) == batch_busy
        for busy in parts:
            ledger, charged = ledger.charge(busy)
            assert 0 <= charged <= Decimal(share) * busy + 1
            charged_sum += charged
            busy_sum += busy
            assert charged_sum == ledger.charged_us == int(Decimal(share) * busy_sum)
    assert ledger.busy_us == busy_sum
