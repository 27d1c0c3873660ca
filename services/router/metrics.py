"""The router's Prometheus metrics (standard naming; they feed the autoscaler)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Label lookups cost microseconds each on the hot path: keep the children.
        self._outcomes: dict[tuple[str, str, str], Counter] = {}
        self._durations: dict[tuple[str, str], Histogram] = {}
        self.requests = Counter(
            "edgeinfer_router_requests", "Inference requests by deployment, PoP and outcome.",
            ["deployment", "pop", "outcome"], registry=self.registry)
        self.duration = Histogram(
            "edgeinfer_router_request_duration_seconds",
            "Whole request time as the router sees it.", ["deployment", "pop"],
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.overhead = Histogram(
            "edgeinfer_router_overhead_seconds",
            "The router's own time per request: the whole request minus the runner's answer"
            " and any cold-start wait.", buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "edgeinfer_router_in_flight_requests", "Requests forwarded and not yet answered.",
            ["deployment", "pop"], registry=self.registry)
        self.held = Gauge(
            "edgeinfer_router_held_requests", "Requests held while their deployment scales up,"
            " by the PoP they wait for (the nearest allowed one).", ["deployment", "pop"],
            registry=self.registry)
        self.refused_seconds = Counter(
            "edgeinfer_router_refused_request_seconds",
            "Requests refused because every replica was full, each counted as the mean request"
            " time: its rate is the concurrency the replicas could not take.",
            ["deployment", "pop"], registry=self.registry)
        self.queued = Gauge(
            "edgeinfer_router_queued_requests", "Requests waiting for a slot while every"
            " allowed replica is full, by the PoP they wait for.", ["deployment", "pop"],
            registry=self.registry)
        self.queue_wait = Histogram(
            "edgeinfer_router_queue_wait_seconds", "How long requests waited for a slot.",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.cold_start_wait = Histogram(
            "edgeinfer_router_cold_start_wait_seconds", "How long held requests waited.",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=self.registry)

        self.confirmations = Counter(
            "edgeinfer_router_delivery_confirmations",
            "Answers confirmed as handed to their clients (what makes usage billable).",
            registry=self.registry)
        self.confirmations_dropped = Counter(
            "edgeinfer_router_delivery_confirmations_dropped",
            "Confirmations dropped because NATS was away too long: that usage is not billed.",
            registry=self.registry)

    def outcome(self, deployment: str, pop: str, outcome: str) -> None:
        key = (deployment, pop, outcome)
        child = self._outcomes.get(key)
        if child is None:
            child = self._outcomes[key] = self.requests.labels(deployment, pop, outcome)
        child.inc()

    def served(self, deployment: str, pop: str, seconds: float) -> None:
        key = (deployment, pop)
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = self.duration.labels(deployment, pop)
        child.observe(seconds)
