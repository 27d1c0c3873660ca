"""The autoscaler's Prometheus source against a real Prometheus (Debian's package) that
scrapes the router's real metrics on loopback: the PromQL sums in-flight, held and excess
requests per (deployment, PoP); no series, or no Prometheus, is an explicit error."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from edgeinfer.services.autoscaler.metrics import MetricsUnavailable, PrometheusConcurrency
from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.shared.embedded import free_port, wait_for_port


@pytest.fixture
def router_metrics() -> Iterator[tuple[RouterMetrics, int]]:
    metrics = RouterMetrics()
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, port
    server.shutdown()


@pytest.fixture
def prometheus(tmp_path: Path, router_metrics: tuple[RouterMetrics, int],
               prometheus_binary: str) -> Iterator[str]:
    _, target = router_metrics
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: edgeinfer-router
    static_configs:
      - targets: ["127.0.0.1:{target}"]
""")
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen([prometheus_binary, f"--config.file={config}",
                                    f"--storage.tsdb.path={tmp_path / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)


async def test_concurrency_from_a_real_prometheus(prometheus: str,
                                                  router_metrics: tuple[RouterMetrics, int]) -> None:
    metrics, _ = router_metrics
    source = PrometheusConcurrency(prometheus)
    with pytest.raises(MetricsUnavailable, match="no router in-flight series"):
        await source.concurrency()  # nothing scraped yet: not the same as no load
    metrics.in_flight.labels("dep_p", "eu-west").set(3)
    metrics.in_flight.labels("dep_p", "us-east").set(0)
    metrics.held.labels("dep_p", "eu-west").set(2)
    refused = metrics.refused_seconds.labels("dep_p", "eu-west")
    got: dict[tuple[str, str], float] = {}
    for _ in range(60):
        refused.inc(2.0)  # refusals worth 2 request-seconds every 0.5 s: 4 concurrent
        try:
            got = await source.concurrency()
        except MetricsUnavailable:
            got = {}
        if got.get(("dep_p", "eu-west"), 0) > 5 + 3.0:
            break
        await asyncio.sleep(0.5)
    assert got[("dep_p", "us-east")] == 0.0
    # 3 in flight + 2 held + the refused load's rate (≈ 4; Prometheus extrapolates a little).
    assert 5 + 3.0 < got[("dep_p", "eu-west")] < 5 + 5.5


async def test_prometheus_down_is_an_explicit_error() -> None:
    source = PrometheusConcurrency(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(MetricsUnavailable, match="Prometheus at"):
        await source.concurrency()
