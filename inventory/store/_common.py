"""Helpers every part of the store shares: the time format (from `estate.inventory.times`)
and agency scoping."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

# Re-exported: the store's modules (and callers of `estate.inventory.store`) take the time
# helpers from here; they live in the standard-library-only core so that exports and the
# console need no store.
from estate.inventory.times import iso, parse_time, utcnow

__all__ = ["first_line", "from_us", "iso", "parse_time", "to_us", "utcnow"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def first_line(exc: BaseException) -> str:
    """An error as one line for an administrator: a driver's message may run to several."""
    return (str(exc).strip() or exc.__class__.__name__).splitlines()[0]


def to_us(at: datetime) -> int:
    """Microseconds since 1970 (UTC): how samples keep their time."""
    return (at - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _scoped(sql: str, args: list[Any], scope: list[str] | None,
            agency: str = "a.name") -> tuple[str, list[Any]]:
    """Limit a query to the operator's agencies (None: all); `agency` is the column naming a
    row's agency (by default that of a join with `agencies a`)."""
    if scope is None:
        return sql, args
    if not scope:
        return sql + " AND 1 = 0", args
    return sql + f" AND {agency} IN ({', '.join('?' for _ in scope)})", [*args, *scope]
