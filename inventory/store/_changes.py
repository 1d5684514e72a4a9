"""The store's change history: what changed on each host, report by report."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.changes import TooLarge
from estate.inventory.store._common import _scoped, iso, parse_time
from estate.inventory.store._events import EventRecords
from estate.inventory.store._records import Change, ChangeEvent, ChangeNotice

# Reports whose changes one query reads (`report_changes`): an OR of this many terms.
_REPORTS_AT_ONCE = 100


class ChangeRecords(EventRecords):
    def _insert_changes(self, events: Iterable[ChangeEvent]) -> None:
        self.db.executemany(
            "INSERT INTO changes (agent_id, at, kind, subject, old_value, new_value, "
            "report_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((e.agent_id, e.at, e.kind, e.subject, e.old_value, e.new_value, e.report_id)
             for e in events))

    def record_changes(self, events: Iterable[ChangeEvent]) -> None:
        """Write history directly, in one transaction: for importing history and seeding
        benchmarks. The hub records changes as it stores reports (`store_reports`)."""
        events = list(events)
        if self.db.history is not None:
            self.db.history.ensure("changes", {e.at[:10] for e in events})
        with self._transaction():
            self._insert_changes(events)

    def last_change_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(id), 0) FROM changes").fetchone()[0])

    # The newest change `changes_after` returned: (id, at).
    _seen_change: tuple[int, str] = (0, "")

    def changes_after(self, change_id: int, limit: int = 10_000) -> list[ChangeNotice]:
        """Changes after `change_id`, oldest first: what watchers are sent after a commit."""
        sql = ("SELECT c.id, c.at, c.agent_id, h.hostname, a.name AS agency, c.kind, "
               "c.subject, c.old_value, c.new_value FROM changes c "
               "JOIN hosts h ON h.agent_id = c.agent_id "
               "JOIN agencies a ON a.id = h.agency_id WHERE c.id > ?")
        args: list[Any] = [change_id]
        seen_id, seen_at = self._seen_change
        if self.db.history is not None and seen_id and change_id >= seen_id:
            # Partitioned by day: without a time bound every day's partition is searched for
            # the newest ids (~4 ms at a year of them). Later ids are later changes, but a
            # batch's times may run a little out of order: a day's slack.
            sql += " AND c.at >= ?"
            args.append(iso(parse_time(seen_at) - timedelta(days=1)))
        rows = [ChangeNotice(*r) for r in self.db.execute(sql + " ORDER BY c.id LIMIT ?",
                                                          [*args, limit])]
        if rows:
            self._seen_change = (rows[-1].id, rows[-1].at)
        return rows

    def report_changes(self, reports: list[tuple[str, str, str]]
                       ) -> dict[tuple[str, str], list[ChangeNotice]]:
        """The changes each (agent id, received at, report id) recorded, by (agent id,
        report id), oldest first: what a host event's `change_count` announced."""
        found: dict[tuple[str, str], list[ChangeNotice]] = {}
        for start in range(0, len(reports), _REPORTS_AT_ONCE):
            part = reports[start:start + _REPORTS_AT_ONCE]
            # The time bounds let PostgreSQL search only the days' partitions they name.
            sql = ("SELECT c.report_id, c.id, c.at, c.agent_id, h.hostname, a.name AS agency, "  # noqa: S608 - placeholders only
                   "c.kind, c.subject, c.old_value, c.new_value FROM changes c "
                   "JOIN hosts h ON h.agent_id = c.agent_id "
                   "JOIN agencies a ON a.id = h.agency_id WHERE c.at >= ? AND c.at <= ? AND ("
                   + " OR ".join("(c.agent_id = ? AND c.at = ? AND c.report_id = ?)"
                                 for _ in part) + ") ORDER BY c.id")
            args: list[Any] = [min(at for _, at, _ in part), max(at for _, at, _ in part)]
            for key in part:
                args += key
            for row in self.db.execute(sql, args):
                found.setdefault((row[3], row[0]), []).append(ChangeNotice(*row[1:]))
        return found

    def scoped_changes(self, scope: list[str] | None, host: str | None = None,
                       since: datetime | None = None,
                       limit: int = 1000,
                       max_bytes: int | None = None) -> list[Change]:
        """The newest `limit` changes, oldest first; `TooLarge` once their text passes
        `max_bytes`, so an API answer is never built past its budget."""
        sql = ("SELECT c.id, c.at, c.agent_id, h.hostname, a.name AS agency, c.kind, "
               "c.subject, c.old_value, c.new_value, c.report_id FROM changes c "
               "JOIN hosts h ON h.agent_id = c.agent_id "
               "JOIN agencies a ON a.id = h.agency_id WHERE 1 = 1")
        args: list[Any] = []
        sql, args = _scoped(sql, args, scope)
        if host:
            sql += " AND (c.agent_id = ? OR h.hostname = ?)"
            args += [host, host]
        if since:
            sql += " AND c.at >= ?"
            args.append(iso(since))
        # The newest `limit` (-1: all), returned oldest first.
        sql += " ORDER BY c.id DESC"
        if limit >= 0:  # -1: all (PostgreSQL has no negative LIMIT)
            sql += " LIMIT ?"
            args.append(limit)
        rows = self.db.execute(sql, args)
        if max_bytes is None:
            return [Change(*r) for r in reversed(rows.fetchall())]
        out, size = [], 0
        for r in rows:
            out.append(Change(*r))
            size += 200 + sum(len(v) for v in r if isinstance(v, str))  # ~ its JSON
            if size > max_bytes:
                raise TooLarge(f"more than {max_bytes} bytes of changes")
        out.reverse()
        return out

    def changes(self, host: str | None = None,
                since: datetime | None = None) -> list[Change]:
        """Every change (all agencies), oldest first: the admin verb's view."""
        return self.scoped_changes(None, host, since, limit=-1)

    def prune_changes(self, older_than: datetime, chunk: int = 10_000) -> int:
        """Delete change history recorded before `older_than`, a chunk per transaction so
        reports waiting on the store thread are not held up by one long delete. On
        PostgreSQL, whole days' partitions are dropped instead."""
        if self.db.history is not None:
            return int(self.db.history.drop_before("changes", iso(older_than)[:10]))
        total = 0
        while True:
            with self._transaction():
                cur = self.db.execute(
                    "DELETE FROM changes WHERE id IN (SELECT id FROM changes WHERE at < ? "
                    "ORDER BY id LIMIT ?)", (iso(older_than), chunk))
            total += cur.rowcount
            if cur.rowcount < chunk:
                return total
