"""The runner's request timeout: BentoML's contract (a JSON 504 when no response has started
in time), without holding each finished request's context until the timer fires."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import weakref
from typing import Any

import pytest
import uvloop
from bentoml._internal.server.base_app import BaseAppFactory

from edgeinfer.services.runner.traffic_timeout import (
    BENTOML_TIMEOUT_MIDDLEWARE,
    ReleasingTimeoutMiddleware,
    install,
)

# Stands in for what a request's context carries in BentoML (its OpenTelemetry span).
request_state: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class _State:
    pass


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _serve(middleware: Any) -> tuple[list[dict[str, Any]], weakref.ref[_State]]:
    """One request through `middleware`, with a marker in its context; (messages sent, a
    weak reference to the marker)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def one_request() -> weakref.ref[_State]:
        state = _State()
        request_state.set(state)
        await middleware({"type": "http"}, None, send)
        return weakref.ref(state)

    # Its own task, as each request is in a server: the context is the request's.
    marker = await asyncio.create_task(one_request())
    return sent, marker


# BentoML's workers run uvloop; asyncio's own loop keeps cancelled timers queued.
LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def _released_after_serving(middleware_class: type, loop: str) -> bool:
    async def scenario() -> bool:
        _, marker = await _serve(middleware_class(_ok, timeout=60))
        await asyncio.sleep(0)  # the loop lets go of the finished request task's wake-up
        gc.collect()
        return marker() is None

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_finished_request_is_released_at_once(loop: str) -> None:
    assert _released_after_serving(ReleasingTimeoutMiddleware, loop)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_bentoml_own_timeout_still_holds_requests_until_it_fires(loop: str) -> None:
    """Why the replacement exists. When this fails, BentoML has fixed its middleware and
    services/runner/traffic_timeout.py can go."""
    assert not _released_after_serving(BENTOML_TIMEOUT_MIDDLEWARE, loop)


def test_a_request_with_no_response_in_time_gets_a_504_and_its_handler_is_cancelled() -> None:
    cancelled = asyncio.Event()

    async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def scenario() -> list[dict[str, Any]]:
        sent, _ = await _serve(ReleasingTimeoutMiddleware(stuck, timeout=0.05))
        await asyncio.wait_for(cancelled.wait(), 1)
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}


def test_a_response_that_started_in_time_may_take_longer_to_finish() -> None:
    async def slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"late"})

    sent, _ = asyncio.run(_serve(ReleasingTimeoutMiddleware(slow_body, timeout=0.05)))
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"late"]


def test_install_makes_bentoml_build_apps_with_it() -> None:
    class App(BaseAppFactory):
        name = "probe"

    install()
    assert [m.cls for m in App(timeout=60).middlewares] == [ReleasingTimeoutMiddleware]
