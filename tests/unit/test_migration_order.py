"""Migrations run by schema and number, except after what they `-- requires:`."""

import pytest

from edgeinfer.shared.db import Migration, discover, in_order


def m(schema: str, version: int, sql: str = "") -> Migration:
    return Migration(schema, version, "x", sql)


def keys(migrations: list[Migration]) -> list[str]:
    return [f"{x.schema}/{x.version}" for x in migrations]


def test_a_required_migration_of_another_schema_runs_first() -> None:
    ordered = in_order([m("metering", 1), m("metering", 2), m("billing", 1, "-- requires: metering/0002"),
                        m("billing", 2), m("accounts", 1)])
    assert keys(ordered) == ["accounts/1", "metering/1", "metering/2", "billing/1", "billing/2"]


def test_without_requirements_the_order_is_schema_then_number() -> None:
    assert keys(in_order([m("b", 2), m("a", 1), m("b", 1)])) == ["a/1", "b/1", "b/2"]


@pytest.mark.parametrize(("migrations", "error"), [
    pytest.param([m("a", 1, "-- requires: b/0001"), m("b", 1, "-- requires: a/0001")], "cycle",
                 id="cycle"),
    pytest.param([m("a", 1, "-- requires: b/0009")], "does not exist", id="missing"),
    pytest.param([m("a", 1, "-- requires: b")], "schema/NNNN", id="malformed"),
])
def test_bad_requirements_are_refused(migrations: list[Migration], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        in_order(migrations)


def test_the_repository_moves_billing_out_of_metering_after_metering_made_its_tables() -> None:
    order = keys(discover())
    assert order.index("metering/4") < order.index("billing/1")
