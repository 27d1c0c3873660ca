"""Where the autoscaler reads load: concurrency per (deployment, PoP).

Concurrency = requests in flight at the runners (as the router forwards them), plus the
requests the router holds while a deployment scales up, plus what it refused because every
replica was full (refused per second × mean request time: load in-flight counts cannot
show, since a full replica takes no more). Two sources behind one method:
- `PrometheusConcurrency` (set `EDGEINFER_PROMETHEUS_URL`): PromQL over the routers'
  metrics through prometheus-api-client.
- `HeartbeatConcurrency` (the embedded default, no Prometheus needed): runners' in-flight
  counts from their heartbeats plus the held counts in the routers' demand signals.
A failed or empty read raises `MetricsUnavailable`: the autoscaler then holds its last
decisions and raises an alert — it never scales down because metrics vanished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from edgeinfer.shared.events import DemandSignal, RunnerHeartbeat

Key = tuple[str, str]  # (deployment id, PoP)

IN_FLIGHT_QUERY = "sum by (deployment, pop) (edgeinfer_router_in_flight_requests)"
HELD_QUERY = "sum by (deployment, pop) (edgeinfer_router_held_requests)"
# Refused at capacity, as concurrency (request-seconds refused per second). The window must
# span a few scrapes: scrape the routers every 1–2 s for responsive scaling.
EXCESS_QUERY = "sum by (deployment, pop) (rate(edgeinfer_router_refused_request_seconds_total[10s]))"


class MetricsUnavailable(RuntimeError):
    pass


class ConcurrencySource(Protocol):
    async def concurrency(self) -> dict[Key, float]: ...


class PrometheusConcurrency:
    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        from prometheus_api_client import PrometheusConnect

        self._prom = PrometheusConnect(url=url, disable_ssl=True)
        self._timeout_s = timeout_s
        self.url = url

    async def concurrency(self) -> dict[Key, float]:
        try:
            in_flight, held, excess = await asyncio.wait_for(asyncio.gather(
                *(asyncio.to_thread(self._prom.custom_query, q)  # type: ignore[attr-defined]
                  for q in (IN_FLIGHT_QUERY, HELD_QUERY, EXCESS_QUERY))), self._timeout_s)
        except Exception as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url}: {exc or type(exc).__name__}") from None
        if not in_flight:
            # Routers export the series from their first request on; none at all means
            # Prometheus is not scraping them, which is not the same as no load.
            raise MetricsUnavailable(f"Prometheus at {self.url} has no router in-flight series "
                                     "(is it scraping the routers?)")
        out: dict[Key, float] = {}
        for sample in (*in_flight, *held, *excess):
            labels = sample.get("metric", {})
            key = (labels.get("deployment", ""), labels.get("pop", ""))
            out[key] = out.get(key, 0.0) + float(sample["value"][1])
        return out


class HeartbeatConcurrency:
    """Fed by the autoscaler's NATS subscriptions; a runner silent for `stale_s` is gone."""

    def __init__(self, clock: Callable[[], float], stale_s: float = 3.0) -> None:
        self._clock = clock
        self._stale_s = stale_s
        self._runners: dict[str, tuple[float, RunnerHeartbeat]] = {}
        self._held: dict[Key, tuple[float, int]] = {}
        self._excess: dict[Key, tuple[float, float]] = {}

    def observe_heartbeat(self, beat: RunnerHeartbeat) -> None:
        self._runners[beat.runner_id] = (self._clock(), beat)

    def observe_demand(self, signal: DemandSignal) -> None:
        key = (signal.deployment_id, signal.pop)
        if signal.held_requests > 0:
            self._held[key] = (self._clock(), signal.held_requests)
        if signal.excess_concurrency > 0:
            self._excess[key] = (self._clock(), signal.excess_concurrency)

    def runner(self, runner_id: str) -> RunnerHeartbeat | None:
        seen = self._runners.get(runner_id)
        if seen is None or self._clock() - seen[0] > self._stale_s:
            return None
        return seen[1]

    def fresh(self, deployment_id: str, pop: str) -> dict[str, RunnerHeartbeat]:
        now = self._clock()
        return {rid: beat for rid, (at, beat) in self._runners.items() if now - at <= self._stale_s
                and beat.deployment_id == deployment_id and beat.pop == pop}

    async def concurrency(self) -> dict[Key, float]:
        now = self._clock()
        # Forget runners long gone (replaced pods, stopped processes): the map stays small.
        for runner_id in [r for r, (at, _) in self._runners.items() if now - at > 60]:
            del self._runners[runner_id]
        out: dict[Key, float] = {}
        for at, beat in self._runners.values():
            if now - at <= self._stale_s and beat.state == "ready":
                key = (beat.deployment_id, beat.pop)
                out[key] = out.get(key, 0.0) + beat.in_flight
        for key, (at, extra) in (*self._held.items(), *self._excess.items()):
            if now - at <= 2.0:  # the router repeats these each second while they last
                out[key] = out.get(key, 0.0) + extra
        return out
