"""A request's usage event as its spool line, filled into the runner's encoded template.

Every usage event of a runner shares its type tag and 8 of its 16 fields. Building a
UsageEvent per request and encoding it (msgspec.structs.replace, then encode: the Decimal
share, three datetimes, sixteen fields) cost ~3 µs per request in a busy worker, where each
step runs cache-cold after BentoML's own per-request work. Here the template is encoded
once, by msgspec, with a placeholder in each per-request field; a request's line is then
one bytes format of the per-request values, each encoded by msgspec as it would be inside
the struct. The line is byte for byte `encode(UsageEvent(...))`
(tests/unit/test_usage_lines.py pins it), so everything downstream decodes it as before.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from edgeinfer.shared.events import UsageEvent, encode

# The per-request fields, in UsageEvent's declaration order (the order msgspec writes them).
_PER_REQUEST = ("id", "time", "tenant_id", "request_id", "busy_us", "gpu_us", "started_at",
                "ended_at", "trace_id")
_NUMBERS = {"busy_us", "gpu_us"}


def _placeholder(field: str) -> str:
    return f"@@edgeinfer-slot-{field}@@"


class UsageLines:
    def __init__(self, template: UsageEvent) -> None:
        # msgspec does not check types when encoding, so every slot can hold a marker string.
        marked = msgspec.structs.replace(template, **{f: _placeholder(f) for f in _PER_REQUEST})
        encoded = encode(marked).replace(b"%", b"%%")  # literal % in a constant field
        positions = []
        for field in _PER_REQUEST:
            marker = encode(_placeholder(field))
            if encoded.count(marker) != 1:
                raise ValueError(f"the template's constant fields contain the marker of {field}")
            positions.append(encoded.index(marker))
            encoded = encoded.replace(marker, b"%d" if field in _NUMBERS else b"%s")
        if positions != sorted(positions):
            raise ValueError("UsageEvent's per-request fields are not in the order line() fills")
        self._format = encoded + b"\n"

    def line(self, event_id: str, tenant_id: str, request_id: str, busy_us: int, gpu_us: int,
             started_at: datetime, ended_at: datetime, trace_id: str = "") -> bytes:
        """The event's JSON and its newline. `time` is when the work ended, as in the struct."""
        ended = encode(ended_at)
        return self._format % (encode(event_id), ended, encode(tenant_id), encode(request_id),
                               busy_us, gpu_us, encode(started_at), ended, encode(trace_id))
