"""Incidents: what the correlator (`estate.inventory.health._correlate`) reads and writes,
what operators read, acknowledge and silence, and the leases that let one hub of several run
an estate-wide loop.

An incident's hosts (`incident_hosts`: since, until) and its timeline (`incident_events`)
are written in the transaction that changes it, with a watch event (kind `incident`) so every
hub's watchers hear of it; the alert dispatcher reads `incident_events` after its cursor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.health._correlate import (
    Capped,
    HealthInputs,
    NetRow,
    OfflineHost,
    Open,
    OpenIncident,
    Resolve,
    Update,
)
from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import _scoped, iso, parse_time
from estate.inventory.store._events import EventRecords
from estate.inventory.store._records import Record

# The watch event of an incident: it rides each hub's event sequence, so it reaches every
# hub's watchers in order, across hubs, with no second cursor. The events table needs an
# agent id, which an incident has not: "" there, and the incident's id in `report_id`, the
# column naming the record an event announces.
INCIDENT = "incident"
STATES = ("open", "recent", "all")
RECENT = timedelta(days=7)  # `incidents` state "recent": open, and resolved this recently
MAX_DETAIL_HOSTS = 5000  # hosts an incident's detail lists
MAX_TIMELINE = 500  # timeline entries an incident's detail lists (the newest)
SITES_REFRESH_S = 60.0  # how often a correlator counts each site's hosts again
# A correlator reads who is offline whole on its first pass, then only the agents whose
# presence or revocation time is after its previous pass, less PRESENCE_SLACK_S (a hub's
# clock a little behind, a transaction committed late: as for `hosts.net_at`), and whole
# again every PRESENCE_REREAD_S whatever happened (what a time cannot tell: a clock far
# behind, an agent moved to another site). At 100,000 hosts offline, reading them all and
# planning took the store thread 2.6-3 s every 5 s; operators' requests waited behind it.
PRESENCE_SLACK_S = 60.0
PRESENCE_REREAD_S = 600.0
# An agent offline in the correlator's sense: it has been online once, and is not now.
_OFFLINE = ("g.connected = 0 AND g.revoked_at IS NULL AND g.connected_at IS NOT NULL AND "
            "g.disconnected_at IS NOT NULL")
_OFFLINE_HOST = "g.id, a.name, s.name, g.disconnected_at, h.hostname"  # an `OfflineHost`
_AGENTS = ("FROM agents g JOIN agencies a ON a.id = g.agency_id JOIN sites s "
           "ON s.id = g.site_id LEFT JOIN hosts h ON h.agent_id = g.id")

_COLUMNS = ("id, kind, subject, title, agency, site, agent_id, probe, state, opened_at, "
            "updated_at, resolved_at, hosts, acked_by, acked_at, silenced_until, silenced_by")


@dataclass(frozen=True, eq=False)
class Incident(Record):
    """An incident as the API, the watch and alerts show it (`as_dict()`: the wire's)."""

    id: int
    kind: str  # site_outage, shared_service or host_offline
    subject: str
    title: str
    agency: str
    site: str
    agent_id: str | None  # host_offline's host
    probe: str | None  # shared_service's probe name
    state: str  # open or resolved
    opened_at: str
    updated_at: str
    resolved_at: str | None
    hosts: int  # hosts it has listed, recovered ones included
    acked_by: str | None
    acked_at: str | None
    silenced_until: str | None
    silenced_by: str | None


@dataclass(frozen=True, eq=False)
class IncidentEvent(Record):
    """One entry of an incident's timeline, with the incident as it is now (for alerts)."""

    id: int
    incident_id: int
    at: str
    event: str  # opened, hosts_changed, resolved, reopened, acknowledged, silenced
    actor: str | None  # None: the correlator; operator:<name> for ack and silence
    detail: dict[str, Any] | None
    incident: Incident


@dataclass
class _PresenceRead:
    """Who the correlator's previous pass read offline, and who revoked, as of `at`."""

    at: str  # that pass's time
    whole_at: float  # time.monotonic() of the last whole read
    offline: dict[str, OfflineHost]
    revoked: set[str]


class IncidentRecords(AuditLog, EventRecords):
    # --- leases ---------------------------------------------------------------------------

    def take_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take the lease `name` for `ttl_s` seconds, or renew it: True when `holder` holds
        it now (it was free, lapsed, or already its own)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "until = excluded.until WHERE leases.holder = excluded.holder "
                "OR leases.until < ?",
                (name, holder, iso(now + timedelta(seconds=ttl_s)), iso(now)))
            row = self.db.execute("SELECT holder FROM leases WHERE name = ?",
                                  (name,)).fetchone()
        return row is not None and row[0] == holder

    def release_lease(self, name: str, holder: str) -> None:
        """A hub stopping lets another take the lease at once."""
        with self._transaction():
            self.db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def _holds(self, name: str, holder: str, now: datetime) -> bool:
        row = self.db.execute("SELECT 1 FROM leases WHERE name = ? AND holder = ? AND "
                              "until >= ?", (name, holder, iso(now))).fetchone()
        return row is not None

    # --- the correlator's inputs and plan -------------------------------------------------

    def health_inputs(self, net_after: str | None, hold: timedelta,
                      now: datetime) -> HealthInputs:
        """What a correlator pass reads: hosts per site, who is offline, the hosts whose
        net verdict changed after `net_after` (all with one when None), open incidents with
        their hosts, and those resolved within `hold` (to reopen).

        Who is offline is read whole when `net_after` is None (a correlator's first pass),
        else from what the previous pass read and the agents changed since
        (`PRESENCE_SLACK_S`). Hosts never connected are no site's hosts yet: they count for
        nothing.
        """
        presence, changed, went_offline = self._presence(net_after is None, now)
        offline, revoked = presence.offline, presence.revoked
        sites = self._site_totals()
        if changed:
            down: dict[tuple[str, str], int] = {}
            for host in offline.values():
                down[(host.agency, host.site)] = down.get((host.agency, host.site), 0) + 1
            if any(n > sites.get(site, 0) for site, n in down.items()):
                sites = self._site_totals(again=True)  # a site new since the last count
        # net_at is the hub's time of the verdict; a batch committed a moment after a later
        # one was read may carry an earlier time, so each pass reads a minute back again
        # from the previous pass's time. From its time, not from the newest net_at read:
        # that would re-read the last burst's rows (all 20,000 after a hub start) every pass
        # until the next change.
        since = iso_minus(net_after, 60) if net_after else ""
        net = [NetRow(r[0], r[1], r[2], r[3], r[4]) for r in self.db.execute(
            "SELECT h.agent_id, a.name, s.name, h.net, h.net_at FROM hosts h "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE h.net_at > ? ORDER BY h.net_at", (since,))]
        position = iso(now)
        incidents = {r[0]: OpenIncident(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], {})
                     for r in self.db.execute(
                         "SELECT id, kind, subject, agency, site, agent_id, probe, updated_at "
                         "FROM incidents WHERE state = 'open'")}
        if incidents:
            for incident_id, agent_id, since_at, until in self.db.execute(
                    "SELECT ih.incident_id, ih.agent_id, ih.since, ih.until FROM "
                    "incident_hosts ih JOIN incidents i ON i.id = ih.incident_id "
                    "WHERE i.state = 'open'"):
                incidents[incident_id].hosts[agent_id] = (since_at, until)
        resolved = {r[0]: (int(r[1]), r[2]) for r in self.db.execute(
            "SELECT subject, id, resolved_at FROM incidents WHERE state = 'resolved' AND "
            "resolved_at >= ? ORDER BY resolved_at", (iso(now - hold),))}
        return HealthInputs(sites, offline, revoked, net, position, list(incidents.values()),
                            resolved, went_offline)

    _presence_read: _PresenceRead | None = None

    def _presence(self, whole: bool, now: datetime) -> tuple[_PresenceRead, bool, set[str]]:
        """Who is offline and who is revoked now (`health_inputs`), whether that may differ
        from the previous pass's, and the agents offline now that the previous read had not
        (or had offline since another time): none on a correlator's first read, when all
        it finds offline is old news to it."""
        read, clock = self._presence_read, time.monotonic()
        if whole or read is None or clock - read.whole_at > PRESENCE_REREAD_S:
            offline = {r[0]: OfflineHost(r[0], r[1], r[2], r[3], r[4]) for r in self.db.execute(
                f"SELECT {_OFFLINE_HOST} {_AGENTS} WHERE {_OFFLINE}")}
            revoked = {r[0] for r in self.db.execute(
                "SELECT id FROM agents WHERE revoked_at IS NOT NULL")}
            news = set() if whole or read is None else \
                {a for a, host in offline.items() if _went_offline(read.offline, host)}
            self._presence_read = _PresenceRead(iso(now), clock, offline, revoked)
            return self._presence_read, True, news
        since = iso_minus(read.at, PRESENCE_SLACK_S)
        # Each agent changed: its state now. A full scan of agents (no index on these
        # times), but of one table and with no join for the agents not changed: 42-67 ms
        # a pass (the plan included) at 100,000 offline where reading them all took 2.6 s.
        rows = self.db.execute(
            f"SELECT {_OFFLINE_HOST}, {_OFFLINE}, g.revoked_at {_AGENTS} WHERE "
            "g.connected_at > ? OR g.disconnected_at > ? OR g.revoked_at > ?",
            (since, since, since)).fetchall()
        went: set[str] = set()
        for r in rows:
            if r[5]:  # offline now
                host = OfflineHost(r[0], r[1], r[2], r[3], r[4])
                if _went_offline(read.offline, host):
                    went.add(host.agent_id)
                read.offline[r[0]] = host
            else:
                read.offline.pop(r[0], None)
            if r[6] is not None:
                read.revoked.add(r[0])
        read.at = max(read.at, iso(now))
        return read, bool(rows), went

    _sites_read: tuple[float, dict[tuple[str, str], int]] | None = None

    def _site_totals(self, again: bool = False) -> dict[tuple[str, str], int]:
        """Hosts per (agency, site), read again once a minute: counting 20,000 agents took
        most of a pass (30-50 ms), and a site's size moves only with enrolments and
        revocations; at once when a site has more hosts offline than it had counted (one
        enrolled since)."""
        now = time.monotonic()
        if again or self._sites_read is None or now - self._sites_read[0] > SITES_REFRESH_S:
            counts = self.db.execute(
                "SELECT agency_id, site_id, COUNT(*) FROM agents WHERE revoked_at IS NULL "
                "AND connected_at IS NOT NULL GROUP BY agency_id, site_id").fetchall()
            names = {r[0]: (r[1], r[2]) for r in self.db.execute(
                "SELECT s.id, a.name, s.name FROM sites s JOIN agencies a "
                "ON a.id = s.agency_id")}
            self._sites_read = (now, {names[site]: int(n) for _, site, n in counts
                                      if site in names})
        return self._sites_read[1]

    def apply_health(self, actions: Iterable[Open | Update | Resolve | Capped], holder: str,
                     now: datetime) -> list[int]:
        """Apply a correlator's plan in one transaction, if `holder` still holds the lease
        "correlator" (a hub that lost it meanwhile writes nothing). Returns the incidents
        changed. A site at its shared-service cap is audited `incidents_capped` (actor
        "hub", target "site:<agency>/<site>")."""
        at = iso(now)
        changed: list[int] = []
        with self._transaction():
            if not self._holds("correlator", holder, now):
                return []
            for action in actions:
                if isinstance(action, Open):
                    changed.append(self._open(action, at))
                elif isinstance(action, Update):
                    self._update(action, at)
                    changed.append(action.id)
                elif isinstance(action, Capped):
                    self._audit("hub", "incidents_capped", f"site:{action.agency}/{action.site}",
                                {"open": action.open, "held_back": action.held_back,
                                 "probes": action.probes}, now)
                else:
                    self.db.execute("UPDATE incidents SET state = 'resolved', resolved_at = ?, "
                                    "updated_at = ? WHERE id = ? AND state = 'open'",
                                    (at, at, action.id))
                    self._event(action.id, at, "resolved", None, None)
                    changed.append(action.id)
            self._announce(INCIDENT, [("", at, str(i), 0) for i in changed])
        return changed

    def _open(self, action: Open, at: str) -> int:
        if action.reopen is not None:
            incident_id = action.reopen
            self.db.execute("UPDATE incidents SET state = 'open', resolved_at = NULL, "
                            "updated_at = ? WHERE id = ?", (at, incident_id))
            self._event(incident_id, at, "reopened", None, action.detail)
            self._set_hosts(incident_id, action.hosts)
            return incident_id
        row = self.db.execute(
            "INSERT INTO incidents (kind, subject, agency, site, agent_id, probe, title, "
            "state, opened_at, updated_at, hosts) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, 0) "
            "RETURNING id", (action.kind, action.subject, action.agency, action.site,
                             action.agent_id, action.probe, action.title, at, at)).fetchone()
        incident_id = int(row[0])
        self._set_hosts(incident_id, action.hosts)
        self._event(incident_id, at, "opened", None, action.detail)
        return incident_id

    def _set_hosts(self, incident_id: int, hosts: list[tuple[str, str]]) -> None:
        """List hosts as affected: new ones from `since`, ones listed before (a reopened
        incident's) affected again."""
        self.db.executemany("INSERT INTO incident_hosts (incident_id, agent_id, since) "
                            "VALUES (?, ?, ?) ON CONFLICT (incident_id, agent_id) "
                            "DO UPDATE SET until = NULL",
                            [(incident_id, a, since) for a, since in hosts])
        self._count_hosts(incident_id)

    def _count_hosts(self, incident_id: int) -> None:
        self.db.execute("UPDATE incidents SET hosts = (SELECT COUNT(*) FROM incident_hosts "
                        "WHERE incident_id = ?) WHERE id = ?", (incident_id, incident_id))

    def _update(self, update: Update, at: str) -> None:
        if update.added:
            self._set_hosts(update.id, update.added)
        if update.recovered:
            self.db.executemany("UPDATE incident_hosts SET until = ? WHERE incident_id = ? "
                                "AND agent_id = ?", [(at, update.id, a)
                                                     for a in update.recovered])
        if update.refailed:
            self.db.executemany("UPDATE incident_hosts SET until = NULL WHERE incident_id = ? "
                                "AND agent_id = ?", [(update.id, a) for a in update.refailed])
        self._count_hosts(update.id)
        self.db.execute("UPDATE incidents SET updated_at = ? WHERE id = ?", (at, update.id))
        self._event(update.id, at, "hosts_changed", None, {
            "added": [a for a, _ in update.added][:50],
            "recovered": update.recovered[:50], "refailed": update.refailed[:50],
            "count": update.affected})

    def _event(self, incident_id: int, at: str, event: str, actor: str | None,
               detail: dict[str, Any] | None) -> None:
        self.db.execute("INSERT INTO incident_events (incident_id, at, event, actor, detail) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (incident_id, at, event, actor,
                         json.dumps(detail, ensure_ascii=False, sort_keys=True)
                         if detail is not None else None))

    # --- operators ------------------------------------------------------------------------

    def incidents(self, scope: list[str] | None, state: str = "open",
                  agency: str | None = None, site: str | None = None, limit: int = 1000,
                  now: datetime | None = None) -> list[Incident]:
        """Incidents in scope: open first, then the most recently updated.

        Args:
            state: "open"; "recent" (open, and resolved within 7 days of `now`); "all".
        """
        sql = f"SELECT {_COLUMNS} FROM incidents WHERE 1 = 1"  # noqa: S608 - literals
        args: list[Any] = []
        if state == "open":
            sql += " AND state = 'open'"
        elif state == "recent":
            assert now is not None, "recent incidents are recent as of a time"
            sql += " AND (state = 'open' OR resolved_at >= ?)"
            args.append(iso(now - RECENT))
        for column, value in (("agency", agency), ("site", site)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        sql, args = _scoped(sql, args, scope, "agency")
        sql += (" ORDER BY CASE WHEN state = 'open' THEN 0 ELSE 1 END, updated_at DESC, "
                "id DESC LIMIT ?")
        return [Incident(*r) for r in self.db.execute(sql, [*args, limit])]

    def incidents_by_ids(self, ids: list[int]) -> list[Incident]:
        """These incidents (any agency: the caller scopes them by `agency`)."""
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        return [Incident(*r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM incidents WHERE id IN ({marks}) ORDER BY id",  # noqa: S608 - placeholders
            ids)]

    def incident_exists(self, incident_id: int) -> bool:
        """Whether the incident exists in any agency (what an out-of-scope probe's audit
        row tells)."""
        return self.db.execute("SELECT 1 FROM incidents WHERE id = ?",
                               (incident_id,)).fetchone() is not None

    def incident(self, incident_id: int, scope: list[str] | None) -> dict[str, Any] | None:
        """An incident in scope with its hosts (agent id, hostname, since, until) and its
        timeline (at, event, actor, detail; the newest MAX_TIMELINE, oldest first)."""
        found = self._scoped_incident(incident_id, scope)
        if found is None:
            return None
        hosts = [{"agent_id": r[0], "hostname": r[1], "since": r[2], "until": r[3]}
                 for r in self.db.execute(
                     "SELECT ih.agent_id, h.hostname, ih.since, ih.until FROM incident_hosts ih "
                     "LEFT JOIN hosts h ON h.agent_id = ih.agent_id WHERE ih.incident_id = ? "
                     "ORDER BY ih.since, ih.agent_id LIMIT ?", (incident_id, MAX_DETAIL_HOSTS))]
        timeline = [{"at": r[0], "event": r[1], "actor": r[2],
                     "detail": json.loads(r[3]) if r[3] else None}
                    for r in self.db.execute(
                        "SELECT at, event, actor, detail FROM incident_events WHERE "
                        "incident_id = ? ORDER BY id DESC LIMIT ?", (incident_id, MAX_TIMELINE))]
        timeline.reverse()
        return {**found.as_dict(), "hosts": hosts, "timeline": timeline}

    def open_incident_counts(self, scope: list[str] | None) -> dict[tuple[str, str], int]:
        """Open incidents per (agency, site) in scope."""
        sql, args = _scoped("SELECT agency, site, COUNT(*) FROM incidents WHERE "
                            "state = 'open'", [], scope, "agency")
        return {(r[0], r[1]): int(r[2])
                for r in self.db.execute(sql + " GROUP BY agency, site", args)}

    def ack_incident(self, incident_id: int, actor: str, scope: list[str] | None,
                     at: datetime) -> Incident | None:
        """Acknowledge an incident in scope (audited `incident_ack`); None when not in
        scope."""
        return self._operator_action(incident_id, scope, at, actor, "acknowledged",
                                     "incident_ack", "acked_by = ?, acked_at = ?",
                                     (actor, iso(at)), None)

    def silence_incident(self, incident_id: int, actor: str, until: datetime,
                         scope: list[str] | None, at: datetime) -> Incident | None:
        """Silence an incident in scope until `until` (audited `incident_silence`); None
        when not in scope."""
        return self._operator_action(incident_id, scope, at, actor, "silenced",
                                     "incident_silence", "silenced_until = ?, silenced_by = ?",
                                     (iso(until), actor), {"until": iso(until)})

    def _operator_action(self, incident_id: int, scope: list[str] | None, at: datetime,
                         actor: str, event: str, action: str, assignments: str,
                         values: tuple[Any, ...], detail: dict[str, Any] | None
                         ) -> Incident | None:
        with self._transaction():
            if self._scoped_incident(incident_id, scope) is None:
                return None
            self.db.execute(f"UPDATE incidents SET {assignments} WHERE id = ?",  # noqa: S608 - literals of this module
                            (*values, incident_id))
            self._event(incident_id, iso(at), event, actor, detail)
            self._audit(actor, action, f"incident:{incident_id}", detail, at)
            self._announce(INCIDENT, [("", iso(at), str(incident_id), 0)])
            return self._scoped_incident(incident_id, scope)

    def _scoped_incident(self, incident_id: int, scope: list[str] | None) -> Incident | None:
        sql, args = _scoped(f"SELECT {_COLUMNS} FROM incidents WHERE id = ?",  # noqa: S608 - literals
                            [incident_id], scope, "agency")
        row = self.db.execute(sql, args).fetchone()
        return Incident(*row) if row else None

    # --- alerts -----------------------------------------------------------------------------

    def last_incident_event_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM incident_events").fetchone()
        return int(row[0] or 0)

    def incident_events_after(self, after_id: int, limit: int = 1000) -> list[IncidentEvent]:
        """Timeline entries of every incident after `after_id`, oldest first, each with
        its incident as it is now."""
        rows = self.db.execute("SELECT id, incident_id, at, event, actor, detail FROM "
                               "incident_events WHERE id > ? ORDER BY id LIMIT ?",
                               (after_id, limit)).fetchall()
        incidents = {i.id: i for i in self.incidents_by_ids(sorted({r[1] for r in rows}))}
        return [IncidentEvent(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None,
                              incidents[r[1]]) for r in rows if r[1] in incidents]

    # --- history --------------------------------------------------------------------------

    def prune_incidents(self, older_than: datetime, chunk: int = 10_000) -> int:
        """Delete incidents resolved before `older_than` with their hosts and timelines, a
        chunk per transaction: kept like change history."""
        total = 0
        while True:
            with self._transaction():
                ids = [r[0] for r in self.db.execute(
                    "SELECT id FROM incidents WHERE state = 'resolved' AND resolved_at < ? "
                    "ORDER BY id LIMIT ?", (iso(older_than), chunk))]
                if ids:
                    marks = ", ".join("?" for _ in ids)
                    for table, column in (("incident_events", "incident_id"),
                                          ("incident_hosts", "incident_id"),
                                          ("incidents", "id")):
                        self.db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})",  # noqa: S608 - literals, placeholders
                                        ids)
            total += len(ids)
            if len(ids) < chunk:
                return total


def _went_offline(before: dict[str, OfflineHost], host: OfflineHost) -> bool:
    """Whether `host`, offline now, went offline after the read that gave `before`."""
    earlier = before.get(host.agent_id)
    return earlier is None or earlier.since != host.since


def iso_minus(text: str, seconds: float) -> str:
    """An `iso()` time `seconds` earlier."""
    return iso(parse_time(text) - timedelta(seconds=seconds))
