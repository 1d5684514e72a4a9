"""The console's in-memory host list: rows from the hub, filtered and sorted locally.

20,000 rows fit easily; filtering is a pass over precomputed lower-case text, so a keystroke
costs milliseconds, not a round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from estate.inventory.filters import TEXT_POSITION, Prepared, compile_prepared, prepare
from estate.inventory.hostlist import COLUMN_KEYS, HOST_COLUMNS

KEY_INDEX = {k: i for i, k in enumerate(COLUMN_KEYS)}
NUMERIC = {c.key for c in HOST_COLUMNS if c.numeric}


class HostModel:
    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}  # by agent id
        self.prepared: dict[str, Prepared] = {}  # the same rows, ready for filtering
        self.order: list[str] = []  # every id, sorted by the current sort key
        self.view: list[list[Any]] = []  # filtered and sorted
        self.filter_text = ""
        self._match = compile_prepared("")
        self.sort_key = "hostname"
        self.reverse = False
        self._order_stale = True

    def extend(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add a page of rows while loading (the list is usable from the first page)."""
        for r in rows:
            self.rows[r[0]] = list(r)
            self.prepared[r[0]] = prepare(r)
        self._order_stale = True
        self.refresh()

    def load(self, rows: Sequence[Sequence[Any]]) -> None:
        # Agent text is neutralised where it is drawn (`_table.cell_text`), not here: a
        # load touches 20,000 rows, a repaint only the visible ones.
        self.rows = {r[0]: list(r) for r in rows}
        self.prepared = {k: prepare(r) for k, r in self.rows.items()}
        self._order_stale = True
        self.refresh()

    def upsert(self, row: Sequence[Any]) -> None:
        """Take a live update; `refresh()` (called once per repaint) shows it."""
        self.rows[row[0]] = list(row)
        self.prepared[row[0]] = prepare(row)
        self._order_stale = True

    def set_filter(self, text: str) -> None:
        """Raises FilterError (and keeps the old filter) when `text` is not understood."""
        self._match = compile_prepared(text)
        self.filter_text = text
        self.refresh()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        self.sort_key = key
        if reverse is not None:
            self.reverse = reverse
        self._order_stale = True
        self.refresh()

    def refresh(self) -> None:
        # Sorting happens only when the key or the rows change; a filter keystroke is one
        # pass over the ids in their sorted order.
        if self._order_stale:
            index = KEY_INDEX[self.sort_key]
            ids = list(self.prepared)
            if self.sort_key in NUMERIC:
                rows = self.rows
                col = [rows[k][index] for k in ids]
                col = [v if v is not None else float("inf") for v in col]
            else:  # text sorts case-insensitively, unknown last
                pos = TEXT_POSITION[index]
                col = [p[1][pos] or "\U0010ffff" for p in self.prepared.values()]
            # Sorting positions by a list lookup is cheaper than by a dict lookup.
            positions = sorted(range(len(ids)), key=col.__getitem__, reverse=self.reverse)
            self.order = [ids[i] for i in positions]
            self._order_stale = False
        match, prepared, rows = self._match, self.prepared, self.rows
        self.view = [rows[k] for k in self.order if match(prepared[k])]

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
