"""Helpers every part of the store shares: the time format and agency scoping."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    """The store's time format: fixed width, so text order is time order."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A date or time from a user or a report ("2026-01-31", "2026-01-31T12:00:00Z").

    Raises:
        ValueError: not an ISO 8601 date or time.
    """
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _scoped(sql: str, args: list[Any], scope: list[str] | None) -> tuple[str, list[Any]]:
    """Limit a query joined with `agencies a` to the operator's agencies (None: all)."""
    if scope is None:
        return sql, args
    if not scope:
        return sql + " AND 1 = 0", args
    return sql + f" AND a.name IN ({', '.join('?' for _ in scope)})", [*args, *scope]
