"""The health port of an `edgeinfer run` process (EDGEINFER_HEALTH_PORT): what an
orchestrator probes and Prometheus scrapes where the process serves no HTTP of its own
(registry, metering, billing, the autoscaler).

`/healthz` answers while the event loop runs (liveness: restart me if it does not);
`/readyz` answers 200 once every service of the process has started and while its NATS
connection is up, else 503 with the reason (readiness: send me no work); `/metrics` is the
process's Prometheus registry (behind EDGEINFER_METRICS_TOKEN when set)."""

from __future__ import annotations

from collections.abc import Callable

from litestar import Litestar, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeinfer.shared.http import EXCEPTION_HANDLERS, metrics_guard


def health_app(why_not_ready: Callable[[], str | None], metrics_token: str | None) -> Litestar:
    """`why_not_ready`: None when ready, else what is missing."""

    @get("/healthz", operation_id="process_health")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", operation_id="process_ready")
    async def readyz() -> Response[dict[str, str]]:
        reason = why_not_ready()
        if reason is None:
            return Response({"status": "ready"})
        return Response({"status": "not ready", "reason": reason}, status_code=503)

    @get("/metrics", operation_id="process_metrics", media_type=CONTENT_TYPE_LATEST,
         guards=[metrics_guard(metrics_token)])
    async def metrics() -> bytes:
        return generate_latest()

    return Litestar(route_handlers=[healthz, readyz, metrics], exception_handlers=EXCEPTION_HANDLERS,
                    openapi_config=None, logging_config=None)  # the process's (shared/logs.py)
