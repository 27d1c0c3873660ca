from decimal import Decimal

import pytest

from services.runner.accounting import Ledger, split_batch


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
