"""Each changed decision, published with its reason and inputs on
`<ns>.autoscaler.decision.<deployment>.<pop>` (kept a week in `<NS>_DECISIONS`): the
decision log operators read through `GET /admin/autoscaler/decisions`."""

from __future__ import annotations

import contextlib
import logging

from nats.aio.client import Client as NATS

from edgeinfer.services.autoscaler.decide import Decision, Inputs
from edgeinfer.services.autoscaler.rollout import Rollout
from edgeinfer.shared.clock import Clock
from edgeinfer.shared.events import Deployment, ScalingDecision, encode, new_id
from edgeinfer.shared.subjects import Subjects

log = logging.getLogger(__name__)


class DecisionLog:
    def __init__(self, nc: NATS, subjects: Subjects, clock: Clock) -> None:
        self._nc = nc
        self._subjects = subjects
        self._clock = clock
        self._published: dict[tuple[str, str], tuple[object, ...]] = {}

    async def publish(self, d: Deployment, pop: str, decision: Decision, inputs: Inputs,
                      target: int, changes: tuple[int, tuple[str, ...]],
                      spilled: dict[str, int], metrics_ok: bool,
                      rollout: Rollout | None = None) -> ScalingDecision | None:
        """The decision as applied (`target` after placement; `changes`: replicas started
        and stopped), or None when it says what the last one for (deployment, PoP) said."""
        reason = decision.reason.split(":")[0]
        rolling = rollout_text(d, rollout)
        fingerprint = (decision.desired, target, reason, metrics_ok, tuple(spilled.items()),
                       rolling)
        if self._published.get((d.id, pop)) == fingerprint:
            return None
        self._published[(d.id, pop)] = fingerprint
        ready = sum(r.state == "ready" for r in inputs.replicas)
        event = ScalingDecision(
            id=new_id(), source="autoscaler", time=self._clock.now(), deployment_id=d.id,
            pop=pop, desired=decision.desired, start=changes[0], stop=list(changes[1]),
            reason=decision.reason + (f"; {sum(spilled.values())} placed in "
                                      f"{', '.join(spilled)} (PoP full)" if spilled else "")
            + (f"; {rolling}" if rolling else ""),
            ready=ready, starting=sum(r.state == "starting" for r in inputs.replicas),
            stable_concurrency=round(decision.stable_concurrency, 3),
            panic_concurrency=round(decision.panic_concurrency, 3),
            schedule_min=inputs.schedule_min, keepalive_s=inputs.keepalive_s,
            metrics_ok=metrics_ok, placed_in=",".join(spilled), rollout=rolling)
        log.info("%s in %s: %d replica(s) — %s", d.id, pop, decision.desired, event.reason)
        with contextlib.suppress(Exception):  # NATS down: the next change publishes again
            await self._nc.jetstream().publish(self._subjects.decision(d.id, pop), encode(event))
        return event


def rollout_text(d: Deployment, rollout: Rollout | None) -> str:
    """What a rollout step did, for the decision log ("" when nothing is being rolled)."""
    if rollout is None or not rollout.rolling:
        return ""
    return (f"rolling out version {d.model_version} on {d.gpu_class}: "
            f"{rollout.updated_ready} new ready, {rollout.outdated} old left")
