"""The router's signing key for its hops to runners (shared/hops.py): made at start, put
in the `<ns>_hop_keys` bucket of the router's NATS, and put again every hour so the
bucket's TTL forgets only keys of routers long gone. While NATS is away the put is retried;
tokens stay valid for runners that already hold the key."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.client import JetStreamContext

from edgeinfer.shared.hops import REFRESH_S, HopSigner

log = logging.getLogger(__name__)


class HopKeys:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.signer = HopSigner()
        self._js = js
        self._bucket = bucket
        self._task: asyncio.Task[None] | None = None
        self.published = asyncio.Event()

    async def start(self) -> None:
        """Put the key once (so that the first request can be verified), then keep it."""
        with contextlib.suppress(Exception):
            await self._put()
        self._task = asyncio.create_task(self._keep(), name="hop-keys")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _put(self) -> None:
        await self.signer.publish(self._js, self._bucket)
        if not self.published.is_set():
            log.info("hop signing key %s published", self.signer.kid)
        self.published.set()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S if self.published.is_set() else 1.0)
            try:
                await self._put()
            except Exception as exc:  # NATS away: runners that have the key keep verifying
                log.warning("hop signing key not published (%s); retrying", exc)
