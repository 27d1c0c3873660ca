"""BentoML's request timeout (`traffic.timeout`), without its per-request memory hold.

BentoML 1.4.40's `TimeoutMiddleware` arms `loop.call_later(timeout, ...)` for every request
and never cancels it. The timer handle keeps the request's context alive until it fires —
by default 60 s later — and with it the request's OpenTelemetry span, locks, deques and
futures: ~21 objects per request, measured with `gc.get_objects()` in a worker after 3,000
requests. At 1,000 req/s that is over a million live objects, which every full cyclic
collection walks: the worker's p99 rose from ~15 ms to ~250 ms over the first minute of
load, in the bare BentoML service as much as in the runner. `traffic.timeout` cannot be
switched off (BentoML's schema refuses anything but a positive number), so the runner
swaps in this class, which keeps BentoML's behaviour — a JSON 504 when no response has
started within the timeout — and cancels the timer as soon as it is no longer needed
(and gives it no copy of the request's context to hold).
"""

from __future__ import annotations

import asyncio
import contextvars

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BENTOML_TIMEOUT_MIDDLEWARE = traffic.TimeoutMiddleware  # what install() replaces


class ReleasingTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        response_started = loop.create_future()
        # An empty context: the timer needs none, and a copy of the request's would keep the
        # request alive in a loop that parks cancelled timers (asyncio keeps them queued until
        # they reach the head of its heap).
        timer = loop.call_later(self.timeout, _time_out, response_started,
                                context=_NO_CONTEXT)

        async def send_and_mark(message: Message) -> None:
            if not response_started.done():
                response_started.set_result(None)
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
        try:
            await response_started
        except TimeoutError:
            if handler.cancel():
                answer = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504)
                await answer(scope, receive, send)
            return
        finally:
            timer.cancel()  # the one line BentoML lacks: release the request now
        await handler  # the response has started: let it finish, however long it streams


_NO_CONTEXT = contextvars.Context()


def _time_out(response_started: asyncio.Future[None]) -> None:
    if not response_started.done():
        response_started.set_exception(TimeoutError())


def install() -> None:
    """Make BentoML build its apps with ReleasingTimeoutMiddleware. Call before the server
    starts (importing the service module is early enough: the app's middleware list is
    built when the worker starts serving, from the module attribute replaced here)."""
    traffic.TimeoutMiddleware = ReleasingTimeoutMiddleware  # type: ignore[misc,assignment]
