"""HTTP conventions shared by every service: refusals with a machine-readable code and a sentence."""

from __future__ import annotations

import json
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


# PostgreSQL away: a connection lost; the server shutting down, crashed or starting up; a
# new connection refused, or its unix socket not there yet (OSError: ConnectionRefusedError,
# FileNotFoundError).
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError, OSError)

EXCEPTION_HANDLERS = {
    HTTPException: refusal_handler,
    **{error: database_unavailable_handler for error in DATABASE_UNAVAILABLE},
    Exception: internal_error_handler,
}


def admin_guard(admin_token: str):
    """Guard for /admin routes: the operator's token, never a tenant's API key."""
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from edgeinfer.shared.auth import bearer_token, same_secret

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        token = bearer_token(connection.headers.get("authorization"))
        if token is None or not same_secret(token, admin_token):
            raise Refusal(401, "admin_unauthenticated",
                          "admin routes need 'Authorization: Bearer <EDGEINFER_ADMIN_TOKEN>'")

    return guard


def metrics_guard(metrics_token: str | None):
    """Guard for /metrics: open when no token is configured (a scraper on a private
    network), else the scraper's bearer token (Prometheus: `authorization: credentials`)."""
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from edgeinfer.shared.auth import bearer_token, same_secret

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if metrics_token is None:
            return
        token = bearer_token(connection.headers.get("authorization"))
        if token is None or not same_secret(token, metrics_token):
            raise Refusal(401, "metrics_unauthenticated",
                          "/metrics needs 'Authorization: Bearer <EDGEINFER_METRICS_TOKEN>'")

    return guard


# --- text PostgreSQL cannot store ------------------------------------------------------
# PostgreSQL refuses NUL in text, and UTF-8 has no lone surrogates (JSON can spell both:
# "\u0000", "\ud800"). Refused at the door with a 400, before any SQL or NATS sees them.


def unstorable(text: str) -> str | None:
    """Why this text cannot be stored (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (not valid Unicode)"
    return None


def _first_unstorable(value: Any, where: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        why = unstorable(value)
        return (where, why) if why else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_unstorable(key, where) or _first_unstorable(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _first_unstorable(item, f"{where}[{i}]"):
                return found
    return None


def refuse_unstorable_path(request: Request[Any, Any, Any]) -> None:
    """The path and query string: names and ids in them reach SQL and NATS subjects."""
    where_why = (_first_unstorable(request.scope["path"], "the path")
                 or _first_unstorable(list(request.query_params.values()), "the query"))
    if where_why:
        raise Refusal(400, "invalid_text", f"{where_why[0]} contains {where_why[1]}; remove it")


async def refuse_unstorable_text(request: Request[Any, Any, Any]) -> None:
    """Litestar `before_request`: the path, the query and a JSON or form body."""
    refuse_unstorable_path(request)
    content_type = request.headers.get("content-type", "")
    if "json" in content_type:
        body = await request.body()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return  # not JSON: the handler refuses it with its own reason
        found = _first_unstorable(data, "body")
    elif "application/x-www-form-urlencoded" in content_type:
        found = _first_unstorable(dict(await request.form()), "form")
    else:
        return
    if found:
        raise Refusal(400, "invalid_text", f"{found[0]} contains {found[1]}; remove it")
