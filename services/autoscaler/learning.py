"""What the autoscaler learns of each deployment × PoP's traffic, and keeps across restarts:
the idle-time histogram the learned keep-alive is cut from (keepalive.py), and when the
last request came. The I/O around keepalive.py and history.py; the clock is passed in."""

from __future__ import annotations

import logging

from edgeinfer.services.autoscaler.history import KeepAliveHistory, KeepAliveRecord
from edgeinfer.services.autoscaler.keepalive import IdleHistogram, KeepAliveConfig, learned_times
from edgeinfer.shared.clock import Clock

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (deployment, PoP); PoP "" for a signal that named none


class KeepAliveLearner:
    def __init__(self, config: KeepAliveConfig, history: KeepAliveHistory, clock: Clock) -> None:
        self._config = config
        self._history = history
        self._clock = clock
        self._idle: dict[Key, IdleHistogram] = {}
        # The window each histogram gives, worked out once per change, not on every tick.
        self._learned: dict[Key, tuple[float, float | None]] = {}
        self.last_request_at: dict[Key, float] = {}  # on the monotonic clock
        self._unsaved: set[Key] = set()

    def note_requests(self, key: Key, now: float, requests: int) -> None:
        """Activity arrives at most once a second; it teaches the deployment's keep-alive
        its idle times (gaps of a minute or more) and request rate."""
        last = self.last_request_at.get(key)
        histogram = self._idle.get(key) or IdleHistogram.empty(self._config)
        self._set(key, histogram.record(0.0 if last is None else (now - last) / 60, requests))
        self.last_request_at[key] = now
        self._unsaved.add(key)

    def times(self, key: Key) -> tuple[float, float | None]:
        """(pre-warm after, keep-alive) learned for `key`; keep-alive None while thin."""
        if key not in self._learned:
            self._learned[key] = learned_times(self._idle.get(key), self._config)
        return self._learned[key]

    def histogram(self, key: Key) -> IdleHistogram | None:
        return self._idle.get(key)

    async def restore(self) -> None:
        """Resume from what an earlier autoscaler learned: the last request is as long ago
        on this process's monotonic clock as it was in wall time."""
        await self._history.open()
        now, wall = self._clock.monotonic(), self._clock.now().timestamp()
        for key, record in (await self._history.load()).items():
            self._set(key, record.histogram(self._config))
            self.last_request_at[key] = now - max(0.0, wall - record.last_request_wall)
        if self._idle:
            log.info("keep-alive history restored for %d deployment × PoP pairs", len(self._idle))

    async def save(self) -> None:
        # The last request in wall time, from its age on the monotonic clock.
        wall_minus_clock = self._clock.now().timestamp() - self._clock.monotonic()
        for key in list(self._unsaved):
            self._unsaved.discard(key)
            record = KeepAliveRecord.of(self._idle[key], self.last_request_at[key] + wall_minus_clock)
            try:
                await self._history.save(*key, record)
            except Exception:
                self._unsaved.add(key)  # try again next time
                raise

    def _set(self, key: Key, histogram: IdleHistogram) -> None:
        self._idle[key] = histogram
        self._learned.pop(key, None)
