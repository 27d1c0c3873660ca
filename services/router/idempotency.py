"""`Idempotency-Key` on inference: a retry gets the first answer, and is served (and
billed) once.

Claims and answers live in the key-value bucket `<ns>_idempotency` of the router's own
NATS — the PoP's, so every router of a PoP shares them and nothing crosses the WAN on the
hot path. Entries expire after 24 h. Per key (scoped to the tenant):

- the first request claims it atomically (`create`: fails if the key exists) and runs;
  its 200 is stored and replayed to every retry within 24 h (`Idempotent-Replayed: true`);
- a retry while the first still runs: 409 `idempotency_in_progress` + Retry-After; a claim
  older than `abandoned_after_s` (its router died) is taken over;
- the same key with another body or deployment: 422 `idempotency_key_reused`;
- a request that ends in an error is not kept: the claim is dropped, so a retry runs again
  (an error is never billed — only delivered answers are);
- NATS away: 503, since a retry could not be recognised.

Limits: a key is known only at the PoP that served it (a retry routed to another PoP runs
again); an answer larger than NATS's max payload (1 MiB by default) is not kept (logged),
and a retry of it runs again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
from litestar import Response
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from edgeinfer.shared.bus import Unavailable
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.hops import now_ms
from edgeinfer.shared.http import Refusal

log = logging.getLogger(__name__)

TTL_S = 24 * 3600
HEADER = "idempotency-key"
MAX_KEY_CHARS = 255


class _Entry(msgspec.Struct, frozen=True):
    fingerprint: str
    claimed_ms: int
    done: bool = False
    headers: dict[str, str] = {}
    body: bytes = b""


_decoder = msgspec.json.Decoder(_Entry)


class Claim(msgspec.Struct, frozen=True):
    """A request that holds its key: `keep` its answer, or `drop` it on an error."""

    kv_key: str
    fingerprint: str
    revision: int


class Idempotency:
    def __init__(self, js: JetStreamContext, bucket: str, clock: Clock,
                 abandoned_after_s: float) -> None:
        self._js = js
        self._bucket = bucket
        self._clock = clock
        self._abandoned_ms = int(abandoned_after_s * 1000)
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(KeyValueConfig(
                    bucket=self._bucket, storage=StorageType.FILE, ttl=TTL_S, history=1))
        return self._kv

    async def claim(self, tenant_id: str, key: str, deployment: str,
                    body: bytes) -> Claim | Response[Any]:
        """Hold the key for this request, or the stored answer to replay."""
        if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
            raise Refusal(400, "invalid_idempotency_key",
                          f"Idempotency-Key is 1 to {MAX_KEY_CHARS} printable characters")
        kv_key = hashlib.sha256(f"{tenant_id}\n{key}".encode()).hexdigest()
        fingerprint = hashlib.sha256(deployment.encode() + b"\n" + body).hexdigest()
        now = now_ms(self._clock)
        mine = msgspec.json.encode(_Entry(fingerprint, now))
        try:
            kv = await self._store()
            try:
                return Claim(kv_key, fingerprint, await kv.create(kv_key, mine))
            except KeyWrongLastSequenceError:
                pass
            entry = await kv.get(kv_key)
            found = _decoder.decode(entry.value or b"")
            if found.fingerprint != fingerprint:
                raise Refusal(422, "idempotency_key_reused",
                              "this Idempotency-Key was used for another request (another body"
                              " or deployment) in the last 24 h; use a new key")
            if found.done:
                return Response(found.body, status_code=200, media_type="application/json",
                                headers={**found.headers, "idempotent-replayed": "true"})
            if now - found.claimed_ms < self._abandoned_ms:
                raise Refusal(409, "idempotency_in_progress", "a request with this"
                              " Idempotency-Key is still running; retry shortly",
                              headers={"Retry-After": "1"})
            # Its router died mid-way: take it over (only one taker wins the revision).
            return Claim(kv_key, fingerprint, await kv.update(kv_key, mine, last=entry.revision))
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            raise Refusal(409, "idempotency_in_progress", "a request with this Idempotency-Key"
                          " is starting; retry shortly", headers={"Retry-After": "1"}) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise Unavailable("the PoP's message bus (needed for Idempotency-Key)") from exc

    async def once(self, tenant_id: str, key: str, deployment: str, body: bytes,
                   serve: Callable[[], Awaitable[tuple[Response[Any], str, float]]]
                   ) -> tuple[Response[Any], str, float]:
        """Serve under the key: the stored answer if there is one, else `serve()` (kept if
        it is a 200; the claim dropped on any error)."""
        claimed = await self.claim(tenant_id, key, deployment, body)
        if isinstance(claimed, Response):
            return claimed, "", 0.0
        try:
            served = await serve()
        except BaseException:
            await self.drop(claimed)
            raise
        await self.keep(claimed, served[0])
        return served

    async def keep(self, claim: Claim, response: Response[Any]) -> None:
        """Store a 200 for replay. Best effort: if it cannot be stored, a retry runs again."""
        headers = {k: v for k, v in response.headers.items() if k.startswith("x-")}
        entry = _Entry(claim.fingerprint, now_ms(self._clock), done=True, headers=headers,
                       body=response.content)
        try:
            await (await self._store()).update(claim.kv_key, msgspec.json.encode(entry),
                                               last=claim.revision)
        except Exception as exc:
            log.warning("answer for an Idempotency-Key not kept (%s: %s); a retry will run"
                        " again", type(exc).__name__, exc)
            await self.drop(claim)

    async def drop(self, claim: Claim) -> None:
        try:
            await (await self._store()).delete(claim.kv_key, last=claim.revision)
        except Exception as exc:  # it expires anyway; a retry meanwhile gets 409 until abandoned
            log.warning("Idempotency-Key claim not released: %s", exc)
