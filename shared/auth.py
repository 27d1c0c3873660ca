"""API keys: generated with a visible prefix, stored only as a SHA-256 hash.

Keys are 32 random bytes, so a fast hash is enough (no password stretching needed), and
the router can verify one in microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "ei_"


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key from an `Authorization: Bearer <key>` header, or None if absent or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
