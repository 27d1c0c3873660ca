"""Admin view of the autoscaler's recent decisions, read from the `<NS>_DECISIONS` stream
(so it answers from the control plane whichever process runs the autoscaler)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Router, get
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from edgeinfer.shared.events import ScalingDecision
from edgeinfer.shared.http import admin_guard
from edgeinfer.shared.subjects import Subjects


async def recent_decisions(nc: NATS, subjects: Subjects, limit: int,
                           deployment_id: str | None = None) -> list[dict[str, Any]]:
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.decision_stream)
    except NotFoundError:
        return []
    out: list[dict[str, Any]] = []
    seq = info.state.last_seq
    while seq >= max(1, info.state.first_seq) and len(out) < limit:
        try:
            msg = await js.get_msg(subjects.decision_stream, seq)
        except NotFoundError:
            seq -= 1
            continue
        decision = msgspec.json.decode(msg.data or b"{}", type=ScalingDecision)
        if deployment_id is None or decision.deployment_id == deployment_id:
            out.append(msgspec.to_builtins(decision))
        seq -= 1
    return out


def admin_router(nc: NATS, subjects: Subjects, admin_token: str) -> Router:
    @get("/autoscaler/decisions", operation_id="admin_autoscaler_decisions")
    async def decisions(limit: int = 50, deployment: str | None = None) -> dict[str, Any]:
        """Newest first: what was decided, why, and from which inputs."""
        return {"decisions": await recent_decisions(nc, subjects, min(max(limit, 1), 1000),
                                                    deployment)}

    return Router("/admin", route_handlers=[decisions], guards=[admin_guard(admin_token)],
                  tags=["admin"])
