"""Hub side of the distributed layout (docs/topology.md): keep the hub's `USAGE` stream
sourcing every PoP promptly after a cut.

NATS retries a stream source that lost its PoP with a growing backoff: after a one-minute
cut, sourcing resumed ~50 s after the link was back (measured, tests/integration/
test_pop_cut.py). Metering asks each PoP's JetStream domain every `interval_s` whether it
answers; when one that did not answer does again, it re-applies that PoP's source (takes
it out of the stream's config and puts it back), and the hub resumes from the sequence it
had reached. A re-applied source never loses an event; should it ever repeat one, the
ledger's unique event id drops it. It also makes a PoP's usage stream in the PoP's domain
when the PoP answers without one (a new PoP).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from edgeinfer.shared.bus import ensure_pop_streams
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)


class SourceWatch:
    def __init__(self, nc: NATS, subjects: Subjects, pops: Iterable[str],
                 interval_s: float = 2.0) -> None:
        self._nc = nc
        self._subjects = subjects
        self._pops = sorted(pops)
        self._interval_s = interval_s
        self._reachable = dict.fromkeys(self._pops, True)
        self.reapplied = 0

    async def run(self) -> None:
        while True:
            for pop in self._pops:
                reachable, created = await self._answers(pop)
                if reachable and (created or not self._reachable[pop]):
                    try:
                        await self._reapply(pop)
                    except Exception as exc:  # the hub's stream leader moving: next round
                        log.warning("could not re-apply the usage source of %s: %s", pop, exc)
                        reachable = False
                self._reachable[pop] = reachable
            await asyncio.sleep(self._interval_s)

    async def _answers(self, pop: str) -> tuple[bool, bool]:
        """(the PoP's domain answers, its usage stream was made just now). A PoP whose
        stream does not exist yet (a new PoP) gets it from here: the hub owns the layout,
        and runners at the PoP spool their usage until it exists."""
        js = self._nc.jetstream(domain=pop, timeout=1.0)
        try:
            await js.stream_info(self._subjects.pop_usage_stream(pop))
        except NotFoundError:
            try:
                await ensure_pop_streams(js, self._subjects, pop)
            except Exception:
                return False, False
            log.info("created the usage stream of %s in its JetStream domain", pop)
            return True, True
        except Exception:
            return False, False
        return True, False

    async def _reapply(self, pop: str) -> None:
        js = self._nc.jetstream()
        config = (await js.stream_info(self._subjects.usage_stream)).config
        name = self._subjects.pop_usage_stream(pop)
        mine = [s for s in config.sources or [] if s.name == name]
        if not mine:
            return
        others = [s for s in config.sources or [] if s.name != name]
        await js.update_stream(replace(config, sources=others))
        await js.update_stream(replace(config, sources=[*others, *mine]))
        self.reapplied += 1
        log.info("%s answers again: its usage source re-applied on the hub", pop)
