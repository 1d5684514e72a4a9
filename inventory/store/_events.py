"""The watch's event log: what each hub announces to every hub's watchers (a stored report,
an agent online or offline, a host's remote-access offer), written in the transaction that
makes it true, and read back after a cursor per hub.

Why a sequence per hub and not one id for all: each hub's single writer numbers its own
events (`hub_id`, `seq`) and commits them in that order, so a reader that keeps the last seq
it read of each hub never skips one, whatever order the hubs' transactions commit in; a global
id would be safe only as long as every writer of every hub takes the store's one write lock.
A rolled-back transaction leaves a gap, which readers step over.

Change events ride on these too: a report's host event counts the changes it recorded, and a
reader loads them by (agent, report), so changes need no cursor of their own.

Incidents ride on them as well (`_incidents.py`): kind `incident`, the incident's id in
`report_id`, no agent (""), written in the transaction that changes the incident, so every
hub's watchers hear of it in order with no cursor of its own.

A hub's seq goes on from the newest event its name left (pruning always keeps each hub's
newest), so a cursor stays valid across a restart; `hubs.events_from` is where its current run
begins, for readers that find the hub registered after they started. Events are ephemeral:
pruned after an hour or so, and a hub starting reads from now (history is not events).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from estate.inventory.store._base import Connection
from estate.inventory.store._common import iso
from estate.inventory.store._records import Event, EventPage

# What an event announces: a host's row changed (after a report, or its remote-access offer),
# or an agent's presence.
HOST, ONLINE, OFFLINE = "host", "online", "offline"

_COLUMNS = "hub_id, seq, kind, agent_id, at, report_id, change_count"
_SELECTED = ("e.hub_id, e.seq, e.kind, e.agent_id, e.at, e.report_id, e.change_count, "
             "a.name AS agency")

# Events, a column an array (`event_columns`), on PostgreSQL: one statement text whatever
# the count, prepared once. The report writer adds a WHERE to it (`_hosts.py`).
INSERT_EVENTS = (f"INSERT INTO events ({_COLUMNS}) SELECT * FROM unnest("  # noqa: S608 - a literal
                 "?::TEXT[], ?::BIGINT[], ?::TEXT[], ?::TEXT[], ?::TEXT[], ?::TEXT[], "
                 "?::BIGINT[]) AS v (hub_id, seq, kind, agent_id, at, report_id, change_count)")

# `events_after` on PostgreSQL: each hub, named by a cursor (hub ids, seqs) or registered
# (read from `events_from`), with its events after its cursor, or one row of NULLs.
_EVENTS_AFTER = (
    "SELECT k.hub_id, k.after, e.* FROM (SELECT coalesce(c.hub_id, h.id) AS hub_id, "  # noqa: S608 - our own literals
    "coalesce(c.seq, h.events_from - 1) AS after FROM unnest(?::TEXT[], ?::BIGINT[]) "
    "AS c (hub_id, seq) FULL JOIN hubs h ON h.id = c.hub_id) AS k "
    f"LEFT JOIN LATERAL (SELECT {_SELECTED} FROM events e LEFT JOIN agents g "
    "ON g.id = e.agent_id LEFT JOIN agencies a ON a.id = g.agency_id "
    "WHERE e.hub_id = k.hub_id AND e.seq > k.after ORDER BY e.seq LIMIT ?) AS e ON true")

# (agent id, at, report id or None, changes the report recorded)
Announced = tuple[str, str, str | None, int]


class EventRecords(Connection):
    # The hub whose events this store object writes (set when it registers), and the seq of
    # the last one: this object is that hub's only writer. None: an admin verb or a test,
    # which announce nothing.
    _event_hub: str | None = None
    _event_seq = 0
    _event_run_from = 1  # the seq of this run's first event (`hubs.events_from`)

    def _start_events(self, hub_id: str) -> int:
        """Inside the registering transaction: this store writes `hub_id`'s events from now.

        Returns:
            The seq its first event will have (the run's `events_from`).
        """
        row = self.db.execute("SELECT MAX(seq) FROM events WHERE hub_id = ?",
                              (hub_id,)).fetchone()
        self._event_hub, self._event_seq = hub_id, int(row[0] or 0)
        self._event_run_from = self._event_seq + 1
        return self._event_run_from

    def _run_events_from(self, hub_id: str) -> int:
        """Inside a transaction: where this run of `hub_id`'s events began."""
        if self._event_hub != hub_id:
            return self._start_events(hub_id)
        return self._event_run_from

    def _announce(self, kind: str, events: Iterable[Announced]) -> None:
        """Inside a transaction: append events to this hub's sequence and wake the other
        hubs' readers (PostgreSQL delivers the notification at commit, once however many
        times a transaction asks)."""
        rows = self._event_rows(kind, events)
        if not rows:
            return
        if self.db.dialect == "postgresql":
            # One statement for them all, a column an array: prepared once, whatever the count.
            self.db.execute(INSERT_EVENTS, event_columns(rows))
        else:
            self.db.executemany(f"INSERT INTO events ({_COLUMNS}) "  # noqa: S608 - a literal
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.notify_events()

    def _event_rows(self, kind: str, events: Iterable[Announced]) -> list[tuple[Any, ...]]:
        """Events numbered in this hub's sequence, as rows of `_COLUMNS`; none when this
        store announces nothing."""
        if self._event_hub is None:
            return []
        rows = []
        for agent_id, at, report_id, changes in events:
            # Counted before the commit and never given back: a rolled-back transaction
            # leaves a gap rather than a seq used twice (a lost COMMIT may have committed).
            self._event_seq += 1
            rows.append((self._event_hub, self._event_seq, kind, agent_id, at, report_id,
                         changes))
        return rows

    # --- reading ------------------------------------------------------------------------

    def event_heads(self) -> dict[str, int]:
        """Where a hub starting reads from: each registered hub's newest event seq (now)."""
        rows = self.db.execute("SELECT h.id, h.events_from, (SELECT MAX(e.seq) FROM events e "
                               "WHERE e.hub_id = h.id) FROM hubs h").fetchall()
        return {r[0]: max(int(r[1]) - 1, int(r[2] or 0)) for r in rows}

    def events_after(self, cursors: Mapping[str, int], limit: int = 2000) -> EventPage:
        """The events after `cursors` (hub id -> last seq read), at most `limit` of each hub,
        in one snapshot, merged across hubs by time; a hub registered that `cursors` does
        not name is read from the start of its run.

        Each hub's events keep their own order (its commit order). When a hub had more than
        `limit`, the merge stops where that hub's page ends, so no other hub's later event
        overtakes one of its unread ones; `more` says to read again at once.
        """
        cursors = dict(cursors)
        if self.db.dialect == "postgresql":
            pages = self._pages_at_once(cursors, limit)
        else:
            pages = self._pages(cursors, limit)
        if not cursors:
            return EventPage([], cursors, False)
        for page in pages.values():
            page.sort(key=lambda e: e.seq)
        full = {hub_id for hub_id, page in pages.items() if len(page) >= limit}
        events = _merged(pages, full)
        for event in events:
            cursors[event.hub_id] = event.seq
        return EventPage(events, cursors, bool(full))

    def _pages(self, cursors: dict[str, int], limit: int) -> dict[str, list[Event]]:
        """Each hub's events after its cursor (`events_after`): the hubs, then one statement
        for all their events. `cursors` gains the hubs it did not name."""
        for hub_id, events_from in self.db.execute("SELECT id, events_from FROM hubs"):
            cursors.setdefault(hub_id, int(events_from) - 1)
        hubs = sorted(cursors)
        if not hubs:
            return {}
        # One statement, so one snapshot: an event read here has every event committed
        # before it, on any hub, read now or earlier.
        sql = " UNION ALL ".join(
            f"SELECT * FROM (SELECT {_SELECTED} FROM events e LEFT JOIN agents g "  # noqa: S608 - our own literals
            "ON g.id = e.agent_id LEFT JOIN agencies a ON a.id = g.agency_id "
            f"WHERE e.hub_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?) AS e{i}"
            for i in range(len(hubs)))
        args: list[Any] = []
        for hub_id in hubs:
            args += [hub_id, cursors[hub_id], limit]
        pages: dict[str, list[Event]] = {hub_id: [] for hub_id in hubs}
        for row in self.db.execute(sql, args):
            pages[row[0]].append(Event(*row))
        return pages

    def _pages_at_once(self, cursors: dict[str, int], limit: int) -> dict[str, list[Event]]:
        """`_pages` in one statement (PostgreSQL): this runs after every commit of every hub
        (its NOTIFY wakes each reader), so the registered hubs come with the events, and the
        cursors go as arrays, so the text is the same whatever the hubs and is prepared once.
        A hub with no new event answers one row of NULLs, which names it all the same."""
        hubs = sorted(cursors)
        rows = self.db.execute(_EVENTS_AFTER, ([*hubs], [cursors[h] for h in hubs], limit))
        pages: dict[str, list[Event]] = {}
        for row in rows:
            cursors.setdefault(row[0], int(row[1]))
            page = pages.setdefault(row[0], [])
            if row[2] is not None:
                page.append(Event(*row[2:]))
        return pages

    def wait_for_events(self, timeout_s: float) -> bool:
        """Block until another hub may have written events, or `timeout_s` passed: called
        from the hub's listener thread, on the database's listening connection."""
        return self.db.wait_for_events(timeout_s)

    # --- pruning ------------------------------------------------------------------------

    def prune_events(self, older_than: datetime, chunk: int = 10_000) -> int:
        """Delete events written before `older_than`, a chunk per transaction, except each
        hub's newest: its next run numbers on from there."""
        total = 0
        while True:
            with self._transaction():
                cur = self.db.execute(
                    "DELETE FROM events WHERE (hub_id, seq) IN (SELECT x.hub_id, x.seq FROM "
                    "events x WHERE x.at < ? AND x.seq < (SELECT MAX(n.seq) FROM events n "
                    "WHERE n.hub_id = x.hub_id) ORDER BY x.at LIMIT ?)",
                    (iso(older_than), chunk))
            total += cur.rowcount
            if cur.rowcount < chunk:
                return total


def event_columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """`INSERT_EVENTS`'s parameters: each column of these rows (none: seven empty arrays)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(7)]


def _merged(pages: dict[str, list[Event]], full: set[str]) -> list[Event]:
    """The hubs' pages merged by time, each hub's in its own order, up to the end of the
    first full page."""
    heads = [(page[0].at, hub_id, 0) for hub_id, page in pages.items() if page]
    heapq.heapify(heads)
    out: list[Event] = []
    while heads:
        _, hub_id, i = heapq.heappop(heads)
        page = pages[hub_id]
        out.append(page[i])
        if i + 1 < len(page):
            heapq.heappush(heads, (page[i + 1].at, hub_id, i + 1))
        elif hub_id in full:
            break  # its next events are unread: nothing after them may go first
    return out
