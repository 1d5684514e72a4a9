"""A read-only handle on the store for export threads: hosts (now or as of a moment), the
change history and presence history, streamed in the order exports write them.

It has a connection of its own, opened read-only on the thread that uses it: WAL lets an
export read while the hub writes, and nothing an export does can write.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from estate.inventory.facts import facts_of
from estate.inventory.health.net import row_of_text
from estate.inventory.store._common import _scoped, from_us, iso, to_us
from estate.inventory.store._compliance import summary_of
from estate.inventory.store._database import Database
from estate.inventory.store._hosts import _StatusClock
from estate.inventory.store._records import (
    AvailabilityHost,
    ChangeEvent,
    ComplianceRow,
    HostFacts,
    HostName,
    HostQuery,
)
from estate.inventory.store._remote import remote_state

_ORDER = " ORDER BY a.name, s.name, h.hostname, h.agent_id"


class Reader:
    def __init__(self, db: Database) -> None:
        self.db = db  # read-only, this thread's own (`Database.read_only()`)
        # Stored reports an as-of read could not decode (a corrupt body), skipped rather than
        # failing the whole export; the manifest counts them.
        self.skipped_unreadable = 0

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, query: HostQuery, sql: str, args: list[Any]) -> tuple[str, list[Any]]:
        sql, args = _scoped(sql, args, query.scope)
        if query.agency:
            sql += " AND a.name = ?"
            args.append(query.agency)
        if query.site:
            sql += " AND s.name = ?"
            args.append(query.site)
        return sql, args

    def hosts_now(self, query: HostQuery, now: datetime) -> Iterator[HostFacts]:
        """The hosts as the hub knows them now, by agency, site and hostname, with their
        connectivity verdict (`hosts.net`)."""
        sql, args = self._where(query, (
            "SELECT h.agent_id, a.name, s.name, h.first_seen, h.last_seen, h.interval_s, "
            "g.connected, g.revoked_at, g.remote_access, g.remote_offered, h.facts, "
            # Hosts last stored before facts were kept: their whole snapshot, once.
            "CASE WHEN h.facts IS NULL THEN h.snapshot END, h.compliance, h.net "
            "FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE 1 = 1"), [])
        status_of = _StatusClock(now)
        cursor = self.db.cursor()
        cursor.row_factory = None
        for r in cursor.execute(sql + _ORDER, args):
            facts = json.loads(r[10]) if r[10] else facts_of(json.loads(r[11]))
            yield HostFacts(r[0], r[1], r[2], r[3], r[4], status_of(r[7], r[4], r[6], r[5]),
                            facts, remote_state(r[8], r[9], r[6], r[7]), summary_of(r[12]),
                            row_of_text(r[13]))

    def hosts_as_of(self, query: HostQuery, as_of: datetime) -> Iterator[HostFacts]:
        """The hosts as the hub knew them at `as_of`: each one's last report received by
        then, its presence then, and whether it was revoked then. A host whose report from
        then cannot be read is skipped and counted (`skipped_unreadable`).

        The state is the last kept body by then: a report that changed nothing kept only a
        sample, so the state is unchanged since that body. When it was last seen is its
        newest sample by then (kept `--retention-days`), else that body's time. Their
        connectivity is unknown (None): the verdict (`hosts.net`) is kept for now only.
        """
        at = iso(as_of)
        # Per host three index seeks, driven from the hosts: a join on reports let the
        # planner walk every stored report instead.
        sql, args = self._where(query, (
            "SELECT h.agent_id, a.name, s.name, h.first_seen, "
            "(SELECT MAX(received_at) FROM reports WHERE agent_id = h.agent_id "
            "AND received_at <= ?), h.interval_s, g.revoked_at, "
            "(SELECT body FROM reports WHERE agent_id = h.agent_id AND received_at <= ? "
            "ORDER BY received_at DESC LIMIT 1), "
            "(SELECT MAX(received_us) FROM samples WHERE agent_id = h.agent_id "
            "AND received_us <= ?) "
            "FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE h.first_seen <= ?"), [at, at, to_us(as_of), at])
        status_of = _StatusClock(as_of)
        rows = self.db.execute(sql + _ORDER, args)
        for r in rows.fetchall():
            if r[7] is None:
                continue  # none kept from then: counted by `hosts_missing_history`
            try:
                facts = facts_of(json.loads(gzip.decompress(r[7])))
            except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
                # One bad body must not cost every operator in scope their export.
                self.skipped_unreadable += 1
                continue
            revoked = r[6] if r[6] and r[6] <= at else None
            presence = self.db.execute("SELECT state FROM presence WHERE agent_id = ? AND "
                                       "at <= ? ORDER BY at DESC, id DESC LIMIT 1",
                                       (r[0], at)).fetchone()
            connected = 1 if presence and presence[0] == "online" else 0
            last_seen = max(r[4], iso(from_us(r[8]))) if r[8] is not None else r[4]
            yield HostFacts(r[0], r[1], r[2], r[3], last_seen,
                            status_of(revoked, last_seen, connected, r[5]), facts)

    def hosts_missing_history(self, query: HostQuery, as_of: datetime) -> int:
        """Hosts known at `as_of` whose full reports from then are no longer kept (past
        `--history-days`): samples alone cannot say what a host was."""
        at = iso(as_of)
        sql, args = self._where(query, (
            "SELECT COUNT(*) FROM hosts h JOIN agencies a ON a.id = h.agency_id "
            "JOIN sites s ON s.id = h.site_id WHERE h.first_seen <= ? AND NOT EXISTS "
            "(SELECT 1 FROM reports r WHERE r.agent_id = h.agent_id AND r.received_at <= ?)"),
            [at, at])
        return int(self.db.execute(sql, args).fetchone()[0])

    def host_names(self, query: HostQuery) -> Iterator[HostName]:
        """Each host's name and agency (no order): what labels its change events."""
        sql, args = self._where(query, (
            "SELECT h.agent_id, h.hostname, a.name FROM hosts h "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE 1 = 1"), [])
        return map(HostName._make, self.db.execute(sql, args))

    def change_events(self, until: datetime | None = None,
                      since: datetime | None = None) -> Iterator[ChangeEvent]:
        """Every change event (all hosts) in [since, until], in the order recorded: one
        plain pass over the history, no join per event (what costs at 200,000 of them)."""
        sql = ("SELECT at, agent_id, kind, subject, old_value, new_value, report_id "
               "FROM changes WHERE 1 = 1")
        args = []
        if until is not None:
            sql += " AND at <= ?"
            args.append(iso(until))
        if since is not None:
            sql += " AND at >= ?"
            args.append(iso(since))
        cursor = self.db.cursor()
        cursor.row_factory = None
        return map(ChangeEvent._make, cursor.execute(sql + " ORDER BY id", args))

    def host_count(self, scope: list[str] | None) -> int:
        """Hosts in these agencies (None: all)."""
        sql, args = _scoped("SELECT COUNT(*) FROM hosts h JOIN agencies a "
                            "ON a.id = h.agency_id WHERE 1 = 1", [], scope)
        return int(self.db.execute(sql, args).fetchone()[0])

    def change_count(self, scope: list[str] | None) -> int:
        """Change events of the hosts in these agencies (None: all)."""
        sql, args = _scoped("SELECT COUNT(*) FROM changes c JOIN hosts h "
                            "ON h.agent_id = c.agent_id JOIN agencies a "
                            "ON a.id = h.agency_id WHERE 1 = 1", [], scope)
        return int(self.db.execute(sql, args).fetchone()[0])

    def compliance_rows(self, query: HostQuery, as_of: datetime | None
                        ) -> Iterator[ComplianceRow]:
        """Each host's result per control, as the store keeps them (`_compliance.py`): now,
        or the period holding at `as_of`; by agency, site, hostname and the policy's order.
        History is read, never evaluated again."""
        sql = ("SELECT h.agent_id, a.name, s.name, h.hostname, c.control, c.title, c.theme, "
               "c.severity, c.outcome, c.fact, c.reason, c.since FROM compliance c "
               "JOIN hosts h ON h.agent_id = c.agent_id "
               "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id ")
        if as_of is None:
            sql, args = sql + "WHERE c.ended IS NULL", []
        else:
            at = iso(as_of)
            sql, args = sql + "WHERE c.since <= ? AND (c.ended IS NULL OR c.ended > ?)", [at, at]
        sql, args = self._where(query, sql, args)
        cursor = self.db.cursor()
        cursor.row_factory = None
        return map(ComplianceRow._make, cursor.execute(sql + _ORDER + ", c.position, c.control",
                                                       args))

    def compliance_policy(self, as_of: datetime | None = None) -> dict[str, str] | None:
        """The policy the store had (now, or at `as_of`): name, version, hash."""
        sql, args = "SELECT name, version, hash FROM compliance_policies", []
        if as_of is not None:
            sql, args = sql + " WHERE loaded_at <= ?", [iso(as_of)]
        row = self.db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return {"name": row[0], "version": row[1], "hash": row[2]} if row else None

    # --- presence history (the availability export) ---------------------------------------

    def _counted(self, query: HostQuery, sql: str, args: list[Any], since: datetime,
                 until: datetime) -> tuple[str, list[Any]]:
        """Hosts the availability of [since, until] counts: enrolled before `until`, not
        revoked by `since`; in the query's scope, agency and site."""
        sql += " WHERE g.enrolled_at < ? AND (g.revoked_at IS NULL OR g.revoked_at > ?)"
        return self._where(query, sql, [*args, iso(until), iso(since)])

    def availability_hosts(self, query: HostQuery, since: datetime,
                           until: datetime) -> list[AvailabilityHost]:
        """The hosts counted in [since, until], by agency, site, hostname and agent id, each
        with its presence at `since` (its last presence row at or before then).

        One query: the state at `since` is an index seek per host inside it (presence is
        indexed by agent and time), never a query per host from here.
        """
        sql, args = self._counted(query, (
            "SELECT h.agent_id, a.name, s.name, h.hostname, g.enrolled_at, g.revoked_at, "
            "(SELECT p.state FROM presence p WHERE p.agent_id = h.agent_id AND p.at <= ? "
            "ORDER BY p.at DESC, p.id DESC LIMIT 1) "
            "FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id"),
            [iso(since)], since, until)
        return [AvailabilityHost._make(r) for r in self.db.execute(sql + _ORDER, args)]

    def presence_changes(self, agent_ids: list[str], since: datetime,
                         until: datetime) -> Iterator[tuple[str, str, str]]:
        """The presence rows (agent id, time, state) strictly inside (since, until) of these
        agents (a chunk of the hosts `availability_hosts` returned, a few hundred), by agent
        id, then time: index seeks, no sort. Plain tuples: a few hundred thousand rows an
        export, no object made for each."""
        marks = ", ".join("?" for _ in agent_ids)
        cursor = self.db.cursor()
        cursor.row_factory = None
        return iter(cursor.execute(
            f"SELECT agent_id, at, state FROM presence WHERE agent_id IN ({marks}) "  # noqa: S608 - placeholders only
            "AND at > ? AND at < ? ORDER BY agent_id, at, id",
            [*agent_ids, iso(since), iso(until)]))
