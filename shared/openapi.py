"""The OpenAPI document tells the truth about errors.

Litestar documents its own error shape (`{status_code, detail, extra}`) for the 400s it
adds to each operation; every error here is `{"error": {"code", "message", "status"}}`
(shared/http.py). On start, each operation's error responses are pointed at one `Error`
schema, and a `default` response says that any other status is an error of that shape —
so a generated client (or schemathesis) reads every refusal right.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    Reference,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType

ERROR_SCHEMA = Schema(
    type=OpenAPIType.OBJECT, required=["error"],
    description="Every refusal: `code` is stable for programs, `message` is for people.",
    properties={"error": Schema(
        type=OpenAPIType.OBJECT, required=["code", "message", "status"],
        properties={"code": Schema(type=OpenAPIType.STRING, examples=["deployment_not_found"]),
                    "message": Schema(type=OpenAPIType.STRING),
                    "status": Schema(type=OpenAPIType.INTEGER, examples=[404])})})

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def document_errors(app: Litestar) -> None:
    """Rewrite the app's OpenAPI document in place (before it is first served)."""
    spec = app.openapi_schema
    spec.components = spec.components or Components()
    spec.components.schemas = {**(spec.components.schemas or {}), "Error": ERROR_SCHEMA}
    error = {"application/json": OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Error"))}
    for path_item in (spec.paths or {}).values():
        for method in _METHODS:
            operation = getattr(path_item, method, None)
            if operation is None:
                continue
            responses = dict(operation.responses or {})
            for status, response in responses.items():
                if not status.startswith(("1", "2", "3")) and isinstance(response, OpenAPIResponse):
                    response.content = error
            responses["default"] = OpenAPIResponse(
                description="An error, with its code and a sentence (any status not listed).",
                content=error)
            operation.responses = responses
