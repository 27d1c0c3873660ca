"""What the keep-alive has learned, kept in a JetStream key-value bucket — a thin I/O shell.

Each deployment × PoP's idle-time histogram (keepalive.py) and the wall time of its last
request live under the key `<deployment>.<pop>` in `<namespace>_keepalive`, so an
autoscaler restart resumes from what it had learned instead of the fixed fallback. Saved
at most every `save_every_s` per changed key (and at stop): losing the last minute of
history costs a little learning, never a request.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from edgeinfer.services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig
from edgeinfer.shared.subjects import token

log = logging.getLogger(__name__)


class KeepAliveRecord(msgspec.Struct, frozen=True, kw_only=True):
    bins: dict[int, int]  # idle minutes → count (only the non-empty bins)
    out_of_bounds: int
    out_of_bounds_min: float
    requests: int
    span_min: float
    last_request_wall: float  # epoch seconds

    @classmethod
    def of(cls, histogram: IdleHistogram, last_request_wall: float) -> KeepAliveRecord:
        return cls(bins={i: c for i, c in enumerate(histogram.counts) if c},
                   out_of_bounds=histogram.out_of_bounds,
                   out_of_bounds_min=histogram.out_of_bounds_min, requests=histogram.requests,
                   span_min=histogram.span_min, last_request_wall=last_request_wall)

    def histogram(self, config: KeepAliveConfig) -> IdleHistogram:
        counts = [0] * config.bins
        out_of_bounds = self.out_of_bounds
        for idle_min, count in self.bins.items():
            if 0 <= idle_min < config.bins:
                counts[idle_min] = count
            else:  # the histogram was narrower when this was saved
                out_of_bounds += count
        return IdleHistogram(tuple(counts), out_of_bounds, self.requests, self.span_min,
                             self.out_of_bounds_min)


_decoder = msgspec.json.Decoder(KeepAliveRecord)


def history_key(deployment_id: str, pop: str) -> str:
    return f"{token(deployment_id)}.{token(pop)}"


class KeepAliveHistory:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self._js = js
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        try:
            self._kv = await self._js.key_value(self._bucket)
        except BucketNotFoundError:
            self._kv = await self._js.create_key_value(
                api.KeyValueConfig(bucket=self._bucket, history=1))

    async def load(self) -> dict[tuple[str, str], KeepAliveRecord]:
        assert self._kv is not None
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return {}
        out = {}
        for key in keys:
            deployment_id, _, pop = key.partition(".")
            try:
                entry = await self._kv.get(key)
                out[(deployment_id, pop)] = _decoder.decode(entry.value or b"")
            except (KeyNotFoundError, msgspec.DecodeError) as exc:
                log.warning("keep-alive history %s unreadable (%s): learning it again", key, exc)
        return out

    async def save(self, deployment_id: str, pop: str, record: KeepAliveRecord) -> None:
        assert self._kv is not None
        await self._kv.put(history_key(deployment_id, pop), msgspec.json.encode(record))
