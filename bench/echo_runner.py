"""A minimal ASGI endpoint that speaks the runner's protocol, for benchmarking the router
without the model or BentoML being the bottleneck.  python bench/echo_runner.py PORT"""

from __future__ import annotations

import sys

import msgspec
import uvicorn

_ANSWER = msgspec.json.encode({
    "outputs": {"labels": [3], "probabilities": [[0.0] * 10]},
    "usage": {"event_id": "bench", "gpu_us": 100, "busy_us": 100, "gpu_class": "cpu",
              "pop": "eu-west", "runner_id": "rbench"}})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": _ANSWER})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
