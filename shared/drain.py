"""Draining a runner before it is stopped: the client side of the runner's `/drain` route.

Used by the local executor before SIGTERM and, in a runner pod, by its preStop hook
(`python -m edgeinfer.shared.drain`), so that no router sends a request to a runner whose server is
already closing its connections.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import aiohttp

log = logging.getLogger(__name__)

# After the runner's draining heartbeat, before its server starts closing connections: time
# for every router to have taken the runner out of its table.
ROUTERS_CATCH_UP_S = 0.5


async def drain(url: str, timeout_s: float) -> bool:
    """Ask a runner to drain and wait until nothing is in flight (True), or the timeout, or
    the runner does not answer (False: SIGTERM's own drain is then all there is)."""
    deadline = time.monotonic() + timeout_s
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                async with http.post(f"{url}/drain", json={}) as resp:
                    if resp.status != 200:
                        return False
                    if (await resp.json())["in_flight"] == 0:
                        await asyncio.sleep(ROUTERS_CATCH_UP_S)
                        return True
                await asyncio.sleep(0.05)
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
        log.info("runner at %s did not drain (%s); stopping it anyway", url, exc)
    return False


if __name__ == "__main__":  # python -m edgeinfer.shared.drain URL TIMEOUT_S
    sys.exit(0 if asyncio.run(drain(sys.argv[1], float(sys.argv[2]))) else 1)
