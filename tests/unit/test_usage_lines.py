"""A usage event's spool line, filled into the runner's template, is byte for byte what
msgspec makes of the whole event: the metering side decodes it as any other."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest

from edgeinfer.services.runner.usage_lines import UsageLines
from edgeinfer.shared.events import UsageEvent, encode

NOW = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)


def template(**constant: object) -> UsageEvent:
    fields: dict[str, object] = dict(
        id="", source="runner/eu-west/r1", time=NOW, tenant_id="", request_id="",
        deployment_id="dep_x", model_version="7", runner_id="r1", pop="eu-west",
        region="eu", gpu_class="l40s", gpu_share=Decimal("0.25"), busy_us=0, gpu_us=0,
        started_at=NOW, ended_at=NOW)
    fields.update(constant)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def any_text(rng: random.Random) -> str:
    """Ids as a client may send them: quotes, backslashes, control characters, non-ASCII, %."""
    alphabet = 'ab_-09"\\/%\n\t\x00\x1féü€😀 '
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def test_a_line_is_the_encoded_event_and_a_newline() -> None:
    rng = random.Random(20261127)
    base = template()
    lines = UsageLines(base)
    for _ in range(2000):
        started = NOW + timedelta(microseconds=rng.randrange(0, 10**12))
        ended = started + timedelta(microseconds=rng.randrange(0, 10**7))
        values = dict(id=any_text(rng), tenant_id=any_text(rng), request_id=any_text(rng),
                      busy_us=rng.randrange(0, 10**12), gpu_us=rng.randrange(0, 10**12),
                      started_at=started, ended_at=ended)
        event = msgspec.structs.replace(base, time=ended, **values)
        line = lines.line(values["id"], values["tenant_id"], values["request_id"],
                          values["busy_us"], values["gpu_us"], started, ended)
        assert line == encode(event) + b"\n"
        assert msgspec.json.decode(line, type=UsageEvent) == event


def test_a_percent_sign_in_a_constant_field_is_kept_literally() -> None:
    base = template(source="runner/eu%20west/r%d", deployment_id="dep_%s")
    line = UsageLines(base).line("e1", "t", "r", 5, 1, NOW, NOW)
    decoded = msgspec.json.decode(line, type=UsageEvent)
    assert (decoded.source, decoded.deployment_id) == ("runner/eu%20west/r%d", "dep_%s")


def test_a_constant_field_holding_a_slot_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="marker of tenant_id"):
        UsageLines(template(deployment_id="@@edgeinfer-slot-tenant_id@@"))
