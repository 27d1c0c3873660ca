"""`edgeinfer run <service>` with EDGEINFER_HEALTH_PORT: the probes and the scrape target
of each process that serves no HTTP of its own (as in a Kubernetes pod), and
its logs as JSON lines (EDGEINFER_LOG_FORMAT=json)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeinfer.shared.embedded import free_port
from tests.metrics_lint import lint_problems

BIN = Path(sys.executable).parent


# What each process exports beyond the client's defaults (one name suffices to see it).
OWN_METRIC = {"metering": "edgeinfer_metering_consumer_pending_messages",
              "registry": "python_gc_objects_collected_total",
              "billing": "edgeinfer_billing_step_failures_total",
              "autoscaler": "edgeinfer_autoscaler_metrics_unavailable"}


@pytest.mark.parametrize("service", sorted(OWN_METRIC))
def test_a_service_without_http_answers_probes_and_scrapes_on_its_health_port(
        service: str, nats_url: str, database_url: str, namespace: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": database_url,
           "EDGEINFER_NAMESPACE": namespace, "EDGEINFER_STATE_DIR": str(tmp_path),
           "EDGEINFER_HEALTH_PORT": str(port), "EDGEINFER_HEALTH_HOST": "127.0.0.1",
           "EDGEINFER_METRICS_TOKEN": "scrape-me", "EDGEINFER_LOG_FORMAT": "json"}
    log = tmp_path / f"{service}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(BIN / "edgeinfer"), "run", service], env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert httpx.get(f"{base}/healthz", timeout=2).json() == {"status": "ok"}
        assert httpx.get(f"{base}/metrics", timeout=2).status_code == 401
        scraped = httpx.get(f"{base}/metrics", timeout=2,
                            headers={"Authorization": "Bearer scrape-me"})
        assert scraped.status_code == 200 and "process_cpu_seconds_total" in scraped.text
        assert OWN_METRIC[service] in scraped.text
        assert lint_problems(scraped.text) == ""  # promtool check metrics
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0, log.read_text()[-2000:]
    # EDGEINFER_LOG_FORMAT=json: every line one JSON object, naming its process.
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(r["process"] == service and r["level"] and r["message"]
                           for r in records)
