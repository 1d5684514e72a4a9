"""Estate's times: UTC now, the store's fixed-width text format, and reading a date or time a
user or a report gives. Standard library only, so exports and the console use them without
loading the store."""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["iso", "parse_time", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    """The store's time format: fixed width, so text order is time order."""
    t = t.astimezone(timezone.utc)
    # The year by hand: glibc's %Y does not zero-pad years before 1000, which would break
    # the fixed width (and so the text order) for a time such as 0999-12-31.
    return f"{t.year:04d}" + t.strftime("-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A date or time from a user or a report ("2026-01-31", "2026-01-31T12:00:00Z").

    Raises:
        ValueError: not an ISO 8601 date or time, or one that has no UTC equivalent.
    """
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    t = t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    try:
        # 0001-01-01T00:00:00+01:00 is a valid ISO time but falls before year 1 in UTC, so
        # iso() would raise OverflowError later, far from the input that caused it.
        t.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{text.strip()[:40]} is out of range (years 1 to 9999, in UTC)") \
            from None
    return t
