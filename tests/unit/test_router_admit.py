"""The router's admission order and refusals (no I/O: `admit` reads only its own state)."""

import pytest

from edgeinfer.services.router.gate import TenantGate
from edgeinfer.shared.events import TenantLimits
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.tenancy import Tenant


def router() -> TenantGate:
    return TenantGate()


def refusal(service: TenantGate, tenant: Tenant, now: float) -> Refusal | None:
    try:
        service.admit(tenant, now)
    except Refusal as exc:
        return exc
    return None


def test_concurrency_limit_is_a_429_with_retry_after() -> None:
    service = router()
    tenant = Tenant("ten_a", TenantLimits(max_concurrency=2))
    service.in_flight["ten_a"] = 2
    got = refusal(service, tenant, 0.0)
    assert got is not None and got.status_code == 429 and got.code == "concurrency_limited"
    assert got.headers == {"Retry-After": "1"}


def test_budget_stop_comes_before_the_limits_and_names_the_reason() -> None:
    service = router()
    service.budget_blocked["ten_a"] = "monthly limit of 5.00 EUR reached"
    got = refusal(service, Tenant("ten_a"), 0.0)
    assert got is not None and got.status_code == 402 and "5.00 EUR" in got.detail
    assert refusal(service, Tenant("ten_b"), 0.0) is None  # other tenants are untouched


@pytest.mark.parametrize(("burst", "admitted"), [(1, 1), (3, 3)])
def test_rate_limit_allows_the_burst_then_refuses(burst: int, admitted: int) -> None:
    service = router()
    tenant = Tenant("ten_a", TenantLimits(rate_limit_rps=1.0, rate_limit_burst=burst))
    results = [refusal(service, tenant, 0.0) for _ in range(burst + 1)]
    assert results[:admitted] == [None] * admitted
    last = results[-1]
    assert last is not None and last.code == "rate_limited" and last.headers["Retry-After"] == "1"
    assert refusal(service, tenant, 1.0) is None  # a second later a token is back
