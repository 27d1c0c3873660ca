from edgeinfer.services.metering.reconcile import reconcile


def test_balanced_runners_raise_nothing() -> None:
    (row,) = reconcile({"r1": 500}, {"r1": 500}, {}, now=100.0, grace_s=60)
    assert row.difference_us == 0 and row.open_since is None and not row.alert


def test_a_lag_inside_the_grace_period_is_not_an_alert() -> None:
    (row,) = reconcile({"r1": 500}, {"r1": 400}, {"r1": 90.0}, now=100.0, grace_s=60)
    assert row.difference_us == 100 and row.open_since == 90.0 and not row.alert


def test_a_difference_that_outlasts_the_grace_period_alerts() -> None:
    rows = reconcile({"r1": 500, "r2": 10}, {"r1": 400, "r2": 20}, {"r1": 30.0, "r2": 99.0},
                     now=100.0, grace_s=60)
    assert [(r.runner_id, r.alert) for r in rows] == [("r1", True), ("r2", False)]
    assert rows[1].difference_us == -10  # counted twice is as wrong as lost


def test_a_new_difference_opens_now() -> None:
    (row,) = reconcile({"r1": 5}, {}, {}, now=7.0, grace_s=60)
    assert row.open_since == 7.0 and row.ledger_us == 0
