"""`Idempotency-Key` on every POST of the API (the IETF draft's header; Stripe's rules).

A POST that carries the header is run once per (credential, key) within 24 h: a retry
gets the first answer again (with `Idempotent-Replayed: true`), a retry while the first
still runs gets 409 + Retry-After, and the same key sent with another request (method,
path, query or body) gets 422. A first answer of 5xx is not kept: the retry runs again.

ASGI middleware around the API app, so that every route has it without knowing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from litestar.datastructures import Headers
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from edgeinfer.services.api import repository as repo
from edgeinfer.shared.http import DATABASE_UNAVAILABLE, error_body, unstorable

log = logging.getLogger(__name__)

HEADER = "idempotency-key"
MAX_KEY_CHARS = 255


def idempotency(pool: Callable[[], asyncpg.Pool]) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware factory; `pool` is read per request (the app is built first)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def run(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            headers = Headers.from_scope(scope)
            key = headers.get(HEADER)
            if key is None:
                await app(scope, receive, send)
                return
            if not 0 < len(key) <= MAX_KEY_CHARS or unstorable(key) or not key.isprintable():
                await _json(send, 400, "invalid_idempotency_key",
                            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable characters")
                return
            body = await _read_body(receive)
            principal = hashlib.sha256(headers.get("authorization", "").encode()).hexdigest()
            fingerprint = hashlib.sha256(b"\0".join([
                scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""),
                body])).digest()
            try:
                held = await repo.claim_idempotency_key(pool(), principal, key, fingerprint)
            except DATABASE_UNAVAILABLE as exc:  # outside Litestar's handlers: answer here
                log.warning("idempotency key not claimed, database unavailable: %s", exc)
                await _json(send, 503, "unavailable", "the database cannot be reached right "
                            "now; retry shortly", retry_after=True)
                return
            if held is not None:
                await _answer_held(send, held, fingerprint)
                return
            await _run_once(app, scope, body, send, pool(), principal, key)

        return run

    return middleware


async def _run_once(app: ASGIApp, scope: Scope, body: bytes, send: Send, pool: asyncpg.Pool,
                    principal: str, key: str) -> None:
    status = 500
    content_type = ""
    chunks: list[bytes] = []

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def record(message: Message) -> None:
        nonlocal status, content_type
        if message["type"] == "http.response.start":
            status = message["status"]
            content_type = Headers(message.get("headers", [])).get("content-type", "")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
        await send(message)

    try:
        await app(scope, replay, record)
    except BaseException:
        await _settle(repo.release_idempotency_key(pool, principal, key))
        raise
    # The answer is sent: if the database cannot take its record now, the key stays "in
    # use" and is taken over after a while (repository.ABANDONED_AFTER).
    if status >= 500:
        await _settle(repo.release_idempotency_key(pool, principal, key))
    else:
        await _settle(repo.complete_idempotency_key(pool, principal, key, status, content_type,
                                                    b"".join(chunks)))


async def _settle(write: Awaitable[None]) -> None:
    try:
        await write
    except DATABASE_UNAVAILABLE as exc:
        log.warning("idempotency record not written, database unavailable: %s", exc)


async def _answer_held(send: Send, held: asyncpg.Record, fingerprint: bytes) -> None:
    if bytes(held["fingerprint"]) != fingerprint:
        await _json(send, 422, "idempotency_key_reused", "this Idempotency-Key was used with "
                    "another request in the last 24 h; use a new key for a new request")
    elif held["status"] is None:
        await _json(send, 409, "idempotency_key_in_use", "the first request with this "
                    "Idempotency-Key is still running; retry shortly", retry_after=True)
    else:
        headers = [(b"content-type", (held["content_type"] or "application/json").encode()),
                   (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": held["status"], "headers": headers})
        await send({"type": "http.response.body", "body": bytes(held["body"] or b"")})


async def _json(send: Send, status: int, code: str, message: str,
                retry_after: bool = False) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body",
                "body": msgspec.json.encode(error_body(status, code, message))})


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)
