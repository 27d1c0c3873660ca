"""One forwarded attempt to a runner, and the runner's answer turned into the tenant's.

A replica that refuses the connection, or answers 503 before taking the request (it is
draining), never started it: `NotStarted`, safe to send elsewhere. One that fails after
taking it is not retried (the model may not be idempotent): 502, and it is not billed (no
delivery is confirmed for it; its GPU time stays in the ledger as undelivered).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from litestar import Response
from litestar.background_tasks import BackgroundTask

from edgeinfer.services.router.metrics import RouterMetrics
from edgeinfer.services.router.policy import ReplicaView
from edgeinfer.services.router.table import RoutingTable
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.hops import HEADER as HOP_HEADER
from edgeinfer.shared.http import Refusal
from edgeinfer.shared.tracing import child_traceparent


class _Usage(msgspec.Struct):
    gpu_us: int


class _RunnerAnswer(msgspec.Struct):
    """The part of a runner's answer the router reads; the rest passes through untouched."""

    usage: _Usage


_answer_decoder = msgspec.json.Decoder(_RunnerAnswer)


class NotStarted(Exception):
    """The replica did not take the request (refused connection, or not ready): safe to retry."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """What one forwarded attempt returned, and how long the runner took."""

    status: int
    data: bytes
    seconds: float


class Forwarder:
    def __init__(self, table: RoutingTable, metrics: RouterMetrics, clock: Clock,
                 timeout_s: float,
                 slot_freed: Callable[[str], None] = lambda deployment_id: None) -> None:
        self._table = table
        self._metrics = metrics
        self._clock = clock
        self._timeout_s = timeout_s
        self._http: aiohttp.ClientSession | None = None
        # Called with the deployment id when a forward ends: a slot is free (queue.py).
        self.slot_freed = slot_freed

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=self._timeout_s))

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def forward(self, deployment_id: str, replica: ReplicaView, body: bytes,
                      hop: str, traceparent: str | None = None) -> Upstream:
        """`traceparent`: the client's; each attempt is a span of its own under it."""
        assert self._http is not None, "Forwarder.start() first"
        self._table.outstanding[replica.runner_id] += 1
        gauge = self._metrics.in_flight.labels(deployment_id, replica.pop)
        gauge.inc()
        t0 = self._clock.monotonic()
        try:
            async with self._http.post(replica.url + "/infer", data=body, headers={
                    "content-type": "application/json", HOP_HEADER: hop,
                    "traceparent": child_traceparent(traceparent)}) as resp:
                data = await resp.read()
                if resp.status == 503:
                    raise NotStarted()
                return Upstream(resp.status, data, self._clock.monotonic() - t0)
        except aiohttp.ClientConnectorError:
            raise NotStarted() from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Refusal(502, "runner_failed",
                          f"the replica failed while serving the request ({type(exc).__name__});"
                          " it was not retried because it may have run, and it is not billed"
                          ) from None
        finally:
            gauge.dec()
            self._table.outstanding[replica.runner_id] -= 1
            self.slot_freed(deployment_id)


def answer(upstream: Upstream, request_id: str, replica: ReplicaView, held: bool,
           waited_s: float, delivered: Callable[[str], Awaitable[None]],
           queued_s: float = 0.0) -> Response[Any]:
    """The tenant's response from the runner's, or the refusal that replaces it. A 200 is
    confirmed as `delivered` once its body has been written to the client: that, not the
    runner's answer, makes its GPU time billable."""
    headers = {"x-request-id": request_id, "x-edgeinfer-pop": replica.pop,
               "x-edgeinfer-cold-start": "true" if held else "false",
               "x-edgeinfer-cold-start-wait-ms": str(round(waited_s * 1000)),
               "x-edgeinfer-queue-wait-ms": str(round(queued_s * 1000))}
    if upstream.status == 200:
        try:
            parsed = _answer_decoder.decode(upstream.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise Refusal(502, "runner_error", "the replica's answer was malformed") from None
        headers["x-edgeinfer-gpu-us"] = str(parsed.usage.gpu_us)
        # Pass the runner's JSON object through, with our request id spliced in front:
        # decoding and re-encoding the outputs would cost more than the rest of the hop.
        body = b'{"request_id":"' + request_id.encode() + b'",' + upstream.data.lstrip()[1:]
        return Response(body, status_code=200, headers=headers, media_type="application/json",
                        background=BackgroundTask(delivered, request_id))
    if upstream.status == 401:  # our own signed token refused: not the client's fault
        raise Refusal(502, "runner_refused_hop", "the replica refused this router's token "
                      f"({runner_error_message(upstream.data)}); not billed")
    if 400 <= upstream.status < 500:
        raise Refusal(400, "invalid_input", runner_error_message(upstream.data))
    raise Refusal(502, "runner_error", f"the replica answered {upstream.status}; not billed")


def runner_error_message(data: bytes) -> str:
    """BentoML answers `[{"error": "..."}]` or `{"error": "..."}`: keep only the sentence."""
    try:
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode(errors="replace")[:500]
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])[:500]
    return str(parsed)[:500]
