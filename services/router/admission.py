"""Admission: per-tenant rate limits as token buckets — pure, with time passed in.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; a request
takes one. Worked example, rate 2/s, burst 3: three requests at t=0 pass, the fourth is
told to retry after 0.5 s; at t=0.5 one more passes. (tests/unit/test_admission.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Bucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> Bucket:
        return cls(rate, burst, burst, now)


def take(bucket: Bucket, now: float) -> tuple[Bucket, float]:
    """Take one token: (new bucket, 0.0) when admitted, else (bucket, seconds until one is due)."""
    tokens = min(bucket.burst, bucket.tokens + max(0.0, now - bucket.updated) * bucket.rate)
    if tokens >= 1.0:
        return Bucket(bucket.rate, bucket.burst, tokens - 1.0, now), 0.0
    return Bucket(bucket.rate, bucket.burst, tokens, now), (1.0 - tokens) / bucket.rate


def retry_after_header(wait_s: float) -> str:
    """Retry-After is whole seconds; round up so a client that obeys it is admitted."""
    return str(max(1, math.ceil(wait_s)))
