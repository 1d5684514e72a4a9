"""The console's in-memory host list: rows from the hub, filtered and sorted locally.

20,000 rows fit easily; filtering is a pass over precomputed lower-case text, so a keystroke
costs milliseconds, not a round trip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from estate.inventory.filters import (
    COMPLIANCE_SHARE,
    TEXT_POSITION,
    Prepared,
    compile_prepared,
    prepare,
)
from estate.inventory.hostlist import COLUMN_KEYS, HOST_COLUMNS

KEY_INDEX = {k: i for i, k in enumerate(COLUMN_KEYS)}
NUMERIC = {c.key for c in HOST_COLUMNS if c.numeric}
# The compliance summary's counts (`ComplianceSummary`: share, passed, failed, unknown, ...).
PASSED, FAILED, UNKNOWN = 1, 2, 3


def compliance_share(summary: Any) -> float | None:
    """The passing share (percent) of a row's compliance summary; None when not evaluated."""
    if isinstance(summary, (list, tuple)) and summary:
        share = summary[COMPLIANCE_SHARE]
        if isinstance(share, (int, float)) and not isinstance(share, bool):
            return float(share)
    return None


def compliance_counts(summary: Any) -> tuple[int, int, int] | None:
    """(passed, failed, unknown) of a summary, or None when it is not a usable one."""
    if not isinstance(summary, (list, tuple)) or len(summary) <= UNKNOWN:
        return None
    counts = (summary[PASSED], summary[FAILED], summary[UNKNOWN])
    if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return counts
    return None


def _share_of(c: dict[str, Any]) -> float | None:
    results = c["passed"] + c["failed"] + c["unknown"]
    return round(c["passed"] * 100 / results, 1) if results else None


# What one row adds to the tree's counts: (agency, site, status, compliance results), the
# results being (compliant, passed, failed, unknown), or None when the host is not evaluated.
Tally = tuple[Any, Any, Any, tuple[int, int, int, int] | None]
_A, _S, _ST, _C = (KEY_INDEX[k] for k in ("agency", "site", "status", "compliance"))


def tally(row: Sequence[Any]) -> Tally:
    """A row's contribution to `HostModel.summary`, worked out once when the row arrives:
    the checks of `compliance_counts`, inline (this runs for each of 20,000 rows on a load)."""
    s = row[_C]
    if isinstance(s, (list, tuple)) and len(s) > UNKNOWN:
        passed, failed, unknown = s[PASSED], s[FAILED], s[UNKNOWN]
        if (isinstance(passed, int) and isinstance(failed, int) and isinstance(unknown, int)
                and not isinstance(passed, bool) and not isinstance(failed, bool)
                and not isinstance(unknown, bool) and passed >= 0 and failed >= 0
                and unknown >= 0):
            return row[_A], row[_S], row[_ST], (int(not failed and not unknown), passed,
                                                failed, unknown)
    return row[_A], row[_S], row[_ST], None


class HostModel:
    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}  # by agent id
        self.prepared: dict[str, Prepared] = {}  # the same rows, ready for filtering
        self.tallies: dict[str, Tally] = {}  # the same rows, ready for the tree's counts
        # Thousands of hosts share a tally (place, status, results): keeping one tuple of each
        # saves 20,000 long-lived objects, which the garbage collector would walk on a load.
        self._tally_of: dict[Tally, Tally] = {}
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
            self.tallies[r[0]] = self._tally(r)
        self._order_stale = True
        self.refresh()

    def load(self, rows: Sequence[Sequence[Any]]) -> None:
        # Agent text is neutralised where it is drawn (`_table.cell_text`), not here: a
        # load touches 20,000 rows, a repaint only the visible ones.
        self.rows = {r[0]: list(r) for r in rows}
        self.prepared = {k: prepare(r) for k, r in self.rows.items()}
        self._tally_of = {}
        self.tallies = {k: self._tally(r) for k, r in self.rows.items()}
        self._order_stale = True
        self.refresh()

    def upsert(self, row: Sequence[Any]) -> None:
        """Take a live update; `refresh()` (called once per repaint) shows it."""
        self.rows[row[0]] = list(row)
        self.prepared[row[0]] = prepare(row)
        self.tallies[row[0]] = self._tally(row)
        self._order_stale = True

    def _tally(self, row: Sequence[Any]) -> Tally:
        t = tally(row)
        return self._tally_of.setdefault(t, t)

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
            col: list[Any]
            if self.sort_key == "compliance":  # by share, the least compliant first
                # The share `prepare` checked; NaN (not evaluated) sorts last, like unknowns.
                inf = float("inf")
                col = [v if (v := p[3]) == v else inf for p in self.prepared.values()]
            elif self.sort_key in NUMERIC:
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
        """Counts per agency and site, from the rows (the same shape as the API's), and their
        compliance: results summed over the evaluated hosts, and the passing share."""
        # Rows were tallied as they arrived, and many hosts share a tally (same place, status
        # and results), so this is one C-speed count of 20,000 tuples and a short loop, not
        # a pass over the rows on every live repaint.
        places: dict[tuple[str, str], list[Any]] = {}
        for (agency, site, status, results), n in Counter(self.tallies.values()).items():
            place = places.get((agency, site))
            if place is None:
                place = places[(agency, site)] = [
                    {"total": 0, "online": 0, "offline": 0, "stale": 0, "revoked": 0},
                    [0, 0, 0, 0, 0]]  # evaluated hosts, compliant, passed, failed, unknown
            counts, sums = place
            counts["total"] += n
            counts[status] = counts.get(status, 0) + n
            if results is not None:
                compliant, passed, failed, unknown = results
                sums[0] += n
                sums[1] += compliant * n
                sums[2] += passed * n
                sums[3] += failed * n
                sums[4] += unknown * n
        agencies: dict[str, Any] = {}
        totals = _blank_compliance()
        compliance: dict[str, Any] = {"totals": totals, "agencies": {}}
        for (agency, site), (counts, sums) in sorted(places.items()):
            a = agencies.setdefault(agency, {"counts": dict.fromkeys(counts, 0), "sites": {}})
            a["sites"][site] = counts
            for key, n in counts.items():
                a["counts"][key] = a["counts"].get(key, 0) + n
            c = compliance["agencies"].setdefault(agency, {"counts": _blank_compliance(),
                                                           "sites": {}})
            site_c = dict(zip(_RESULT_KEYS, sums, strict=True))
            for key, n in site_c.items():
                c["counts"][key] += n
                totals[key] += n
            site_c["share"] = _share_of(site_c)
            c["sites"][site] = site_c
        for c in compliance["agencies"].values():
            c["counts"]["share"] = _share_of(c["counts"])
        totals["share"] = _share_of(totals)
        return {"agencies": agencies, "compliance": compliance}


_RESULT_KEYS = ("hosts", "compliant", "passed", "failed", "unknown")


def _blank_compliance() -> dict[str, Any]:
    return dict.fromkeys(_RESULT_KEYS, 0)
