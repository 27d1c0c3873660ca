"""schemathesis against the API's own OpenAPI document (`/schema/openapi.json`), as the
admin and as a tenant, with a bounded number of examples per operation: no server error
(5xx other than a documented 503) and no answer that breaks the document's schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

ST = Path(sys.executable).parent / "st"
EXAMPLES = 15


def schemathesis(stack: Stack, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ST), "run", f"{stack.api}/schema/openapi.json", "--url", stack.api,
         "--checks", "not_a_server_error,response_schema_conformance",
         "--max-examples", str(EXAMPLES), "--seed", "1", "--workers", "1",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "20",
         "--generation-deterministic", "--no-color", "--report", "ndjson",
         "--report-ndjson-path", str(report),
         # The ops routes are not an API (a Prometheus text page and a probe).
         "--exclude-path", "/metrics", "--exclude-path", "/healthz",
         "--header", f"Authorization: Bearer {token}"],
        capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("who", ["admin", "tenant"])
def test_no_server_error_and_no_schema_violation(stack: Stack, who: str, tmp_path: Path) -> None:
    token = stack.ready["admin_token"] if who == "admin" else stack.ready["api_key"]
    report = tmp_path / "events.ndjson"
    result = schemathesis(stack, token, report)
    summary = result.stdout[-6000:]
    print(f"\nschemathesis as {who}:\n{summary}")
    assert result.returncode == 0, summary
    # It ran requests at all (a schema it could not load would pass trivially).
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    assert len(events) > 50, len(events)
