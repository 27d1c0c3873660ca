"""A runner's answers as ready JSON responses.

BentoML passes a Response returned by an API method through as it is. Given a dict (what
the method's annotation documents for the OpenAPI schema), it would validate it with
pydantic, dump it again and `json.dumps` it: three passes over every answer, in the one
path every request takes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

_encode = msgspec.json.Encoder().encode


def json_answer(answer: dict[str, Any]) -> Response:
    return Response(_encode(answer), media_type="application/json")
