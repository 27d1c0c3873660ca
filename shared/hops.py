"""Signed hops: a router vouches for each request it forwards to a runner.

The token binds the tenant (the one the router authenticated), the deployment, the
request id and an expiry, signed with the router's Ed25519 key (decision 0013). A runner
serves only a request whose token verifies, and takes the tenant for its usage event from
the token alone, never from the body. Runners hold only public keys: one that is broken
into cannot mint tokens for the others.

Keys travel in the JetStream key-value bucket `<ns>_hop_keys` of the NATS the router and
runners share (a PoP's own domain, so it works through a cut): key = the key id, value =
the raw public key. A router makes a key at start, puts it, and puts it again every
`REFRESH_S` so that the bucket's TTL drops keys of routers long gone.

    <kid>.<claims, base64url>.<signature, base64url>     in the `Edgeinfer-Hop` header
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Awaitable, Callable

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from edgeinfer.shared.clock import SYSTEM_CLOCK, Clock

HEADER = "edgeinfer-hop"
TTL_S = 30  # a token is for one forward (and its retries); 30 s covers clock skew too
KEY_TTL_S = 24 * 3600  # the bucket forgets a key not refreshed for a day
REFRESH_S = 3600


class HopClaims(msgspec.Struct, array_like=True, frozen=True):
    tenant_id: str
    deployment_id: str
    request_id: str
    expires_ms: int


class InvalidHop(Exception):
    """No token, a malformed or forged one, an expired one, or one for another deployment."""


class KeysUnavailable(Exception):
    """The token names a key this runner has not seen and cannot fetch now (NATS away)."""


_claims_decoder = msgspec.json.Decoder(HopClaims)


def now_ms(clock: Clock) -> int:
    """Wall-clock milliseconds, what expiries are in (router and runner hosts share NTP)."""
    return int(clock.now().timestamp() * 1000)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HopSigner:
    def __init__(self, kid: str | None = None, key: Ed25519PrivateKey | None = None) -> None:
        self.kid = kid or "hk" + secrets.token_hex(8)
        self._key = key or Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def token(self, tenant_id: str, deployment_id: str, request_id: str, now_ms: int,
              ttl_s: float = TTL_S) -> str:
        claims = _b64(msgspec.json.encode(HopClaims(tenant_id, deployment_id, request_id,
                                                    now_ms + int(ttl_s * 1000))))
        signature = self._key.sign(f"{self.kid}.{claims}".encode())
        return f"{self.kid}.{claims}.{_b64(signature)}"

    def headers(self, tenant_id: str, deployment_id: str, request_id: str = "direct",
                ttl_s: float = TTL_S, clock: Clock = SYSTEM_CLOCK) -> dict[str, str]:
        """The header a router sends with a request (tests and benchmarks call runners
        directly with it)."""
        return {HEADER: self.token(tenant_id, deployment_id, request_id, now_ms(clock), ttl_s)}

    async def publish(self, js: JetStreamContext, bucket: str) -> None:
        """Put this key where runners look for it (making the bucket if need be)."""
        kv = await hop_keys(js, bucket)
        await kv.put(self.kid, self.public_key)


class HopVerifier:
    """Checks tokens; fetches a key the first time its id is seen, then keeps it."""

    def __init__(self, fetch: Callable[[str], Awaitable[bytes | None]]) -> None:
        self._fetch = fetch
        self._keys: dict[str, Ed25519PublicKey] = {}

    async def verify(self, token: str | None, deployment_id: str, now_ms: int) -> HopClaims:
        if not token:
            raise InvalidHop("no Edgeinfer-Hop token: runners serve only requests a router signed")
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidHop("malformed Edgeinfer-Hop token")
        kid, claims_b64, signature_b64 = parts
        key = self._keys.get(kid)
        if key is None:
            try:
                raw = await self._fetch(kid)
            except Exception as exc:
                raise KeysUnavailable(f"cannot fetch signing key {kid!r} now: {exc}") from exc
            if raw is None:
                raise InvalidHop(f"unknown signing key {kid!r}")
            key = self._keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
        try:
            key.verify(_unb64(signature_b64), f"{kid}.{claims_b64}".encode())
            claims = _claims_decoder.decode(_unb64(claims_b64))
        except (InvalidSignature, binascii.Error, ValueError, msgspec.DecodeError) as exc:
            raise InvalidHop("Edgeinfer-Hop token does not verify") from exc
        if claims.expires_ms <= now_ms:
            raise InvalidHop("Edgeinfer-Hop token expired")
        if claims.deployment_id != deployment_id:
            raise InvalidHop(f"token is for {claims.deployment_id}, not this runner's deployment")
        return claims


async def hop_keys(js: JetStreamContext, bucket: str, replicas: int = 1) -> KeyValue:
    """The bucket, made if need be (replicated on a hub cluster; one copy at a PoP)."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=bucket, storage=StorageType.FILE, ttl=KEY_TTL_S, history=1,
            replicas=replicas))


def kv_fetcher(js: JetStreamContext, bucket: str) -> Callable[[str], Awaitable[bytes | None]]:
    async def fetch(kid: str) -> bytes | None:
        try:
            kv = await js.key_value(bucket)
            return (await kv.get(kid)).value
        except (KeyNotFoundError, BucketNotFoundError):
            return None

    return fetch
