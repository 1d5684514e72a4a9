"""Helpers every part of the store shares: the time format (from `estate.inventory.times`)
and agency scoping."""

from __future__ import annotations

from typing import Any

# Re-exported: the store's modules (and callers of `estate.inventory.store`) take the time
# helpers from here; they live in the standard-library-only core so that exports and the
# console need no store.
from estate.inventory.times import iso, parse_time, utcnow

__all__ = ["iso", "parse_time", "utcnow"]


def _scoped(sql: str, args: list[Any], scope: list[str] | None) -> tuple[str, list[Any]]:
    """Limit a query joined with `agencies a` to the operator's agencies (None: all)."""
    if scope is None:
        return sql, args
    if not scope:
        return sql + " AND 1 = 0", args
    return sql + f" AND a.name IN ({', '.join('?' for _ in scope)})", [*args, *scope]
