"""Per-tenant admission state: budget hard stops (pushed by billing), requests in flight,
and rate-limit buckets (admission.py). `admit` reads only this state — no I/O."""

from __future__ import annotations

from collections import defaultdict

from edgeinfer.services.router.admission import Bucket, retry_after_header, take
from edgeinfer.shared.events import BudgetState
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.tenancy import Tenant


class TenantGate:
    def __init__(self) -> None:
        self.budget_blocked: dict[str, str] = {}  # tenant → why its budget stops it
        self.in_flight: dict[str, int] = defaultdict(int)
        self._buckets: dict[str, Bucket] = {}

    def admit(self, tenant: Tenant, now: float) -> None:
        """Budget, concurrency and rate limits, in that order; raises the refusal."""
        reason = self.budget_blocked.get(tenant.id)
        if reason is not None:
            raise Refusal(402, "budget_exceeded",
                          f"your spend limit stops new requests ({reason or 'limit reached'});"
                          " raise the limit or wait for the next period")
        limits = tenant.limits
        if self.in_flight[tenant.id] >= limits.max_concurrency:
            raise Refusal(429, "concurrency_limited",
                          f"at most {limits.max_concurrency} requests in flight per tenant",
                          headers={"Retry-After": "1"})
        bucket = self._buckets.get(tenant.id)
        if bucket is None or bucket.rate != limits.rate_limit_rps:
            bucket = Bucket.full(limits.rate_limit_rps, limits.rate_limit_burst, now)
        bucket, wait = take(bucket, now)
        self._buckets[tenant.id] = bucket
        if wait > 0:
            raise Refusal(429, "rate_limited",
                          f"over {limits.rate_limit_rps:g} requests/s (burst "
                          f"{limits.rate_limit_burst})", headers={"Retry-After": retry_after_header(wait)})

    def budget(self, state: BudgetState) -> None:
        if state.blocked:
            self.budget_blocked[state.tenant_id] = state.reason
        else:
            self.budget_blocked.pop(state.tenant_id, None)

    def forget(self, tenant_id: str) -> None:
        """The tenant's limits changed: start its bucket afresh."""
        self._buckets.pop(tenant_id, None)
