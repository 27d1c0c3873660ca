"""W3C Trace Context (`traceparent`) on the inference path, pure.

A router continues the client's trace when its `traceparent` is valid, and starts one
when it is absent or malformed; each hop to a runner is a span of its own (a new parent
id per attempt). The runner writes the trace id into the request's usage event, so a
charge can be found from a trace and a trace from a charge.
https://www.w3.org/TR/trace-context/#traceparent-header
"""

from __future__ import annotations

import random
import re

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16
# Ids need to be unique, not secret: a PRNG, not os.urandom's system call on every hop
# (py-spy put secrets.token_hex at 2.5 % of the router's CPU at saturation).
_random = random.Random()


def _hex(bits: int) -> str:
    while not (value := _random.getrandbits(bits)):  # all zeros is invalid
        pass
    return f"{value:0{bits // 4}x}"


def trace_id_of(traceparent: str | None) -> str:
    """The trace id of a valid `traceparent`, else ""."""
    match = _TRACEPARENT.match((traceparent or "").strip().lower())
    if match is None or match[1] == "ff" or match[2] == _ZERO_TRACE or match[3] == _ZERO_PARENT:
        return ""
    if match[1] == "00" and match[5]:  # version 00 has exactly four fields
        return ""
    return match[2]


def child_traceparent(incoming: str | None) -> str:
    """The `traceparent` of a new span under `incoming` (the same trace and its sampled
    flag), or of a new trace when `incoming` is not valid."""
    trace_id = trace_id_of(incoming)
    flags = "01"
    if trace_id:
        flags = (incoming or "").strip().lower()[53:55]
    else:
        trace_id = _hex(128)
    return f"00-{trace_id}-{_hex(64)}-{flags}"
