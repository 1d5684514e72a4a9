"""The console's in-memory host list: rows from the hub, filtered and sorted locally.

20,000 rows fit easily; filtering is a pass over precomputed lower-case text, so a keystroke
costs milliseconds, not a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from console._safe import plain
from inventory.filters import compile_filter
from inventory.hostlist import COLUMN_KEYS

KEY_INDEX = {k: i for i, k in enumerate(COLUMN_KEYS)}


class HostModel:
    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}  # by agent id
        self.view: list[list[Any]] = []  # filtered and sorted
        self.filter_text = ""
        self.sort_key = "hostname"
        self.reverse = False

    def load(self, rows: Sequence[Sequence[Any]]) -> None:
        self.rows = {r[0]: _clean(r) for r in rows}
        self.refresh()

    def upsert(self, row: Sequence[Any]) -> None:
        self.rows[row[0]] = _clean(row)
        self.refresh()

    def set_filter(self, text: str) -> None:
        """Raises FilterError (and keeps the old filter) when `text` is not understood."""
        compile_filter(text)
        self.filter_text = text
        self.refresh()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        self.sort_key = key
        if reverse is not None:
            self.reverse = reverse
        self.refresh()

    def refresh(self) -> None:
        match = compile_filter(self.filter_text)
        index = KEY_INDEX[self.sort_key]
        view = [r for r in self.rows.values() if match(r)]
        view.sort(key=lambda r: (r[index] is None, _sortable(r[index])), reverse=self.reverse)
        self.view = view

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.rows), "online": 0, "offline": 0, "stale": 0, "revoked": 0}
        i = KEY_INDEX["status"]
        for r in self.rows.values():
            out[r[i]] = out.get(r[i], 0) + 1
        return out


    def summary(self) -> dict[str, Any]:
        """Counts per agency and site, from the rows (the same shape as the API's)."""
        agencies: dict[str, Any] = {}
        a_i, s_i, st_i = KEY_INDEX["agency"], KEY_INDEX["site"], KEY_INDEX["status"]
        blank = {"total": 0, "online": 0, "offline": 0, "stale": 0, "revoked": 0}
        for r in self.rows.values():
            a = agencies.setdefault(r[a_i], {"counts": dict(blank), "sites": {}})
            site = a["sites"].setdefault(r[s_i], dict(blank))
            for counts in (a["counts"], site):
                counts["total"] += 1
                counts[r[st_i]] = counts.get(r[st_i], 0) + 1
        return {"agencies": agencies}


def _sortable(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value if value is not None else 0


def _clean(row: Sequence[Any]) -> list[Any]:
    """Agent-supplied strings are neutralised once, when they arrive."""
    return [plain(v) if isinstance(v, str) else v for v in row]
