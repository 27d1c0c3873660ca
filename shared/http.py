"""HTTP conventions shared by every service: refusals with a machine-readable code and a sentence."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException

log = logging.getLogger("edgeinfer.http")


class Refusal(HTTPException):
    """An error a client can act on: `code` is stable for programs, `detail` is for people."""

    def __init__(self, status_code: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code


def error_body(status_code: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status_code}}


def refusal_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Render every HTTP error in one shape: {"error": {"code", "message", "status"}}."""
    if isinstance(exc, Refusal):
        return Response(error_body(exc.status_code, exc.code, exc.detail), status_code=exc.status_code,
                        headers=exc.headers)
    if isinstance(exc, HTTPException):
        code = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "body_too_large", 429: "rate_limited"}.get(
                    exc.status_code, "error")
        message = exc.detail
        if exc.extra:
            message = f"{message}: {exc.extra}"
        return Response(error_body(exc.status_code, code, message), status_code=exc.status_code,
                        headers=exc.headers)
    return Response(error_body(500, "internal", "internal error; it has been logged"),
                    status_code=500)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Anything unexpected: log it with its traceback, tell the client no more than that."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(error_body(500, "internal", "internal error; it has been logged"),
                    status_code=500)


def database_unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """PostgreSQL restarting or unreachable: the client may simply retry (503 + Retry-After),
    as with a NATS outage; an operator sees it, with its traceback, in the log."""
    log.warning("database unavailable on %s %s: %r", request.method, request.url.path, exc,
                exc_info=exc)
    return Response(error_body(503, "unavailable",
                               "the database cannot be reached right now; retry shortly"),
                    status_code=503, headers={"Retry-After": "2"})


EXCEPTION_HANDLERS = {
    HTTPException: refusal_handler,
    # A connection lost; the server shutting down, crashed or starting up; a new connection
    # refused, or its unix socket not there yet (OSError: ConnectionRefusedError,
    # FileNotFoundError).
    asyncpg.PostgresConnectionError: database_unavailable_handler,
    asyncpg.exceptions.OperatorInterventionError: database_unavailable_handler,
    OSError: database_unavailable_handler,
    Exception: internal_error_handler,
}


def admin_guard(admin_token: str):
    """Guard for /admin routes: the operator's token, never a tenant's API key."""
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from shared.auth import bearer_token, same_secret

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        token = bearer_token(connection.headers.get("authorization"))
        if token is None or not same_secret(token, admin_token):
            raise Refusal(401, "admin_unauthenticated",
                          "admin routes need 'Authorization: Bearer <EDGEINFER_ADMIN_TOKEN>'")

    return guard
