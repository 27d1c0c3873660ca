"""Calendar months in UTC, and the `from`/`to` query of the usage and billing routes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgeinfer.shared.http import Refusal


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (start + timedelta(days=32)).replace(day=1)


def parse_month(text: str) -> datetime:
    """"2026-10" → 2026-10-01T00:00Z."""
    try:
        return datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"month {text!r} must look like 2026-10") from None


def parse_period(from_: str | None, to: str | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) from ISO-8601 query values; defaults to the current calendar month (UTC)."""
    def parse(name: str, value: str) -> datetime:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Refusal(400, "invalid_period", f"{name}={value!r} is not an ISO-8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    start = parse("from", from_) if from_ else month_start(now)
    end = parse("to", to) if to else next_month(month_start(now))
    if end <= start:
        raise Refusal(400, "invalid_period", "'to' must be after 'from'")
    if end - start > timedelta(days=400):
        raise Refusal(400, "invalid_period", "a period is at most 400 days")
    return start, end
