"""The console's in-memory host list: rows from the hub, filtered and sorted locally.

100,000 rows fit; filtering is a pass over precomputed lower-case text, so a keystroke
costs milliseconds, not a round trip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import contains, itemgetter
from typing import Any

from estate.inventory.filters import (
    COMPLIANCE_SHARE,
    TEXT_POSITION,
    Prepared,
    compile_prepared,
    one_text_word,
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
_ROW, _TEXTS, _HAY, _STATUS = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(_ST)
# Columns whose values thousands of rows repeat, kept once (`HostModel._share`); the same
# columns' lower-cased text in a prepared row.
_SHARED_COLUMNS = tuple(KEY_INDEX[k] for k in ("agency", "site", "status", "os", "model",
                                                "cpu", "remote"))
# ...and their lower-cased text, with the net state's, in a prepared row.
_SHARED_TEXTS = tuple(TEXT_POSITION[KEY_INDEX[k]] for k in ("agency", "site", "status", "net",
                                                            "os", "model", "cpu", "remote"))
_MAX_SHARED = 100_000  # values kept once at most (until the next load)
_LAST_NUMBER, _LAST_TEXT = float("inf"), "\U0010ffff"


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
    """Rows by agent id, each prepared once; the view is the rows the filter lets through,
    in the sort's order.

    100,000 rows fit: rows are kept by position (arrival order), a sort orders positions by
    a list of keys kept beside them, and a page that arrives while loading is merged into
    that order rather than re-sorted with everything (the load would grow with the square of
    the host count). The many values that thousands of rows share (agency, site, status, OS,
    model, CPU) are kept once.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[Any]] = {}  # by agent id
        self.tallies: dict[str, Tally] = {}  # the same rows, ready for the tree's counts
        # Thousands of hosts share a tally (place, status, results): keeping one tuple of each
        # saves 20,000 long-lived objects, which the garbage collector would walk on a load.
        self._tally_of: dict[Tally, Tally] = {}
        self._shared: dict[Any, Any] = {}  # one copy of each value many rows repeat
        self._slot: dict[str, int] = {}  # agent id -> position in `_prepared` and `_keys`
        self._prepared: list[Prepared] = []  # by position, ready for filtering
        self._keys: list[Any] = []  # by position: the current sort's key
        self._order: list[int] = []  # positions, sorted by the current sort key
        self._arrived: list[int] = []  # positions added since the order was made
        self._sorted: list[Prepared] | None = None  # `_prepared` in `_order`, while valid
        self.view: list[list[Any]] = []  # filtered and sorted
        self.filter_text = ""
        self._match = compile_prepared("")
        self._match_all = True
        self._text_word: tuple[int | None, str] | None = None
        self._columns: dict[str | int | None, list[Any]] = {}
        # The last one-word text filter and the positions (in the sorted rows) it let
        # through, while the order holds: a word typed on narrows those, not every row.
        self._hits: tuple[int | None, str, list[int]] | None = None
        self.sort_key = "hostname"
        self.reverse = False
        self._order_stale = True

    def extend(self, rows: Sequence[Sequence[Any]]) -> None:
        """Add a page of rows while loading (the list is usable from the first page)."""
        for r in rows:
            self._put(r)
        self.refresh()

    def load(self, rows: Sequence[Sequence[Any]]) -> None:
        # Agent text is neutralised where it is drawn (`_table.cell_text`), not here: a
        # load touches every row, a repaint only the visible ones.
        self.rows, self.tallies, self._tally_of, self._shared = {}, {}, {}, {}
        self._slot, self._prepared, self._keys = {}, [], []
        self._order, self._arrived, self._sorted = [], [], None
        for r in rows:
            self._put(r)
        self._order_stale = True
        self.refresh()

    def upsert(self, row: Sequence[Any]) -> None:
        """Take a live update; `refresh()` (called once per repaint) shows it."""
        self._put(row)

    def _put(self, r: Sequence[Any]) -> None:
        row = self._share(list(r))
        agent_id = row[0]
        prepared = prepare(row)
        texts = prepared[1]
        keep = self._shared.setdefault if len(self._shared) < _MAX_SHARED else self._shared.get
        for pos in _SHARED_TEXTS:  # lower-cased text of the shared columns, once each
            texts[pos] = keep(texts[pos], texts[pos])
        self.rows[agent_id] = row
        self.tallies[agent_id] = self._tally(row)
        key = self._key_of(prepared)
        slot = self._slot.get(agent_id)
        if slot is None:
            self._slot[agent_id] = len(self._prepared)
            self._arrived.append(len(self._prepared))
            self._prepared.append(prepared)
            self._keys.append(key)
        else:
            self._prepared[slot] = prepared
            if self._keys[slot] != key:
                self._keys[slot] = key
                self._order_stale = True
        self._sorted = None

    def _share(self, row: list[Any]) -> list[Any]:
        """The row with the text thousands of rows repeat replaced by one shared copy."""
        # Bounded: agents that report a new model name every time must not grow it forever.
        keep = self._shared.setdefault if len(self._shared) < _MAX_SHARED else self._shared.get
        for i in _SHARED_COLUMNS:
            if isinstance(v := row[i], str):
                row[i] = keep(v, v)
        return row

    def _tally(self, row: Sequence[Any]) -> Tally:
        t = tally(row)
        return self._tally_of.setdefault(t, t)

    def _key_of(self, p: Prepared) -> Any:
        """The current sort's key for a prepared row: text case-insensitively, unknown
        last; compliance by share, the least compliant first."""
        key = self.sort_key
        if key == "compliance":
            # The share `prepare` checked; NaN (not evaluated) sorts last, like unknowns.
            return v if (v := p[3]) == v else _LAST_NUMBER
        if key in NUMERIC:
            return v if (v := p[0][KEY_INDEX[key]]) is not None else _LAST_NUMBER
        return p[1][TEXT_POSITION[KEY_INDEX[key]]] or _LAST_TEXT

    def set_filter(self, text: str) -> None:
        """Raises FilterError (and keeps the old filter) when `text` is not understood."""
        self._match = compile_prepared(text)
        self._match_all = not text.split()
        self._text_word = one_text_word(text)
        self.filter_text = text
        self.refresh()

    def sort_by(self, key: str, reverse: bool | None = None) -> None:
        if key != self.sort_key:
            self.sort_key = key
            self._keys = [self._key_of(p) for p in self._prepared]
        if reverse is not None:
            self.reverse = reverse
        self._order_stale = True
        self.refresh()

    def refresh(self) -> None:
        # Sorting happens only when the key or a row's key changes; rows that arrived since
        # are merged in (the order and the new rows are two runs for Timsort); a filter
        # keystroke is one pass over the prepared rows in their sorted order. Ties keep
        # arrival order either way, so a merge orders exactly as a full sort would.
        keys = self._keys
        if self._order_stale:
            self._order = sorted(range(len(keys)), key=keys.__getitem__, reverse=self.reverse)
            self._order_stale, self._arrived, self._sorted = False, [], None
        elif self._arrived:
            self._order = sorted(self._order + self._arrived, key=keys.__getitem__,
                                 reverse=self.reverse)
            self._arrived, self._sorted = [], None
        if self._sorted is None:
            self._sorted = list(map(self._prepared.__getitem__, self._order))
            self._columns, self._hits = {}, None
        if self._match_all:
            self.view = self._column("rows")[:]
        elif self._text_word is not None:
            # One word looking for text (most keystrokes): `in` over a column at C speed;
            # over the last such word's hits only when this word contains it (typing on:
            # text holding "win" holds "wi"), the same rows in the same order.
            position, needle = self._text_word
            column = self._column(position)
            last = self._hits
            candidates: Sequence[int]
            if last is not None and last[0] == position and last[1] in needle:
                candidates = last[2]
                texts: Iterable[str] = map(column.__getitem__, candidates)
            else:
                candidates, texts = range(len(column)), column
            hits = list(compress(candidates, map(contains, texts, repeat(needle))))
            self._hits = (position, needle, hits)
            self.view = list(map(self._column("rows").__getitem__, hits))
        else:
            self.view = list(map(_ROW, filter(self._match, self._sorted)))

    def _column(self, which: str | int | None) -> list[Any]:
        """A column of the prepared rows in the view's order, kept until the order or a row
        changes: "rows", the rows; None, the text of every column; a text position, that
        column's text."""
        column = self._columns.get(which)
        if column is None:
            assert self._sorted is not None
            if which == "rows":
                column = list(map(_ROW, self._sorted))
            elif which is None:
                column = list(map(_HAY, self._sorted))
            else:
                column = list(map(itemgetter(which), map(_TEXTS, self._sorted)))
            self._columns[which] = column
        return column

    def counts(self) -> dict[str, int]:
        out = {"total": len(self.rows), "online": 0, "offline": 0, "stale": 0, "revoked": 0}
        for status, n in Counter(map(_STATUS, self.rows.values())).items():
            out[status] = out.get(status, 0) + n
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
