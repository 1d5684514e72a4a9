"""The store's alert records: what the alert dispatcher reads (incident events and remote
sessions after its cursors, the hosts whose reports the watch events announce), the host
conditions firing, and the queue of notifications the sender works through.

The dispatcher writes a pass's notifications, its new cursors and its firing changes in one
transaction (`queue_alerts`): a hub that dies mid-pass reads the same events again and queues
nothing twice, and none is lost. Only the hub holding the "alerts" lease calls these.

Each channel's queue is bounded (MAX_PENDING_PER_CHANNEL pending): while a channel's is full,
what the dispatcher queues for it is dropped, counted in the alert cursors ("dropped:<channel>",
so a hub taking over the lease carries the count on), and once the queue has drained below the
bound the episode is audited as one `alert_dropped` row with the count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import iso
from estate.inventory.store._records import (
    AlertHost,
    AlertIncidentEvent,
    AlertSession,
    HostRow,
    Notification,
    OffHost,
)
from estate.inventory.store._snapshot import current_report

PENDING, SENT, FAILED = "pending", "sent", "failed"
HOSTNAMES_SHOWN = 10  # of an incident's hosts, named in its message
# A firing row: (rule, agent id, condition).
Firing = tuple[str, str, str]
# A notification to queue: (channel, rule, thread, payload JSON text).
Queued = tuple[str, str, str, str]
# Pending notifications one channel may hold. A channel that is down keeps its notifications
# up to a day (the sender's GIVE_UP_AFTER) and an incident flood can queue thousands an hour;
# 10,000 is days of any real estate's alerts (a few MB of rows), yet keeps the table, and the
# sender's catch-up once the channel is back, bounded whatever the incident rate.
MAX_PENDING_PER_CHANNEL = 10_000
# Alert cursors keeping an episode of a full queue: notifications dropped so far, and when the
# first was (Unix seconds).
DROPPED, DROPPED_SINCE = "dropped:", "dropped_since:"


def queue_full_episodes(cursors: dict[str, int]) -> list[str]:
    """The channels whose queue was full and has not drained yet, from `alert_cursors()`."""
    return [name.removeprefix(DROPPED) for name in cursors if name.startswith(DROPPED)]


@dataclass
class Queueing:
    """What `queue_alerts` did: the notifications queued, and per channel those dropped
    because its queue is full."""

    ids: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  # channel -> dropped this pass
    filled: list[str] = field(default_factory=list)  # channels whose queue became full
    drained: dict[str, int] = field(default_factory=dict)  # channel -> dropped in its episode,
    #   now over (audited)

_NOTIFICATION = ("id, channel, rule, thread, payload, state, attempts, next_at, last_error, "
                 "created_at, sent_at")


class NotificationRecords(AuditLog):
    if TYPE_CHECKING:  # `_hosts.py`'s, beside this part in `Store`
        def host_rows(self, scope: list[str] | None, agent_ids: list[str] | None = None,
                      page: tuple[str, int] | None = None) -> list[HostRow]: ...

    # --- what the dispatcher reads ------------------------------------------------------

    def alert_cursors(self) -> dict[str, int]:
        """The dispatcher's read positions by name ("incident_events", "remote_sessions",
        "events:<hub id>")."""
        return {r[0]: int(r[1]) for r in
                self.db.execute("SELECT name, position FROM alert_cursors")}

    def alert_heads(self) -> dict[str, int]:
        """Where a dispatcher that never ran starts: the newest incident event and remote
        session now (it tells what happens from now on, not the past)."""
        out = {}
        for name, sql in (("incident_events", "SELECT MAX(id) FROM incident_events"),
                          ("remote_sessions", "SELECT MAX(id) FROM remote_sessions")):
            out[name] = int(self.db.execute(sql).fetchone()[0] or 0)
        return out

    def alert_incident_events(self, after_id: int, limit: int = 500
                              ) -> list[AlertIncidentEvent]:
        """Incident events after `after_id`, oldest first, each with its incident."""
        rows = self.db.execute(
            "SELECT e.id, e.incident_id, e.at, e.event, e.detail, i.kind, i.subject, i.title, "
            "i.agency, i.site, i.agent_id, i.probe, i.state, i.opened_at, i.resolved_at, "
            "i.hosts, i.silenced_until FROM incident_events e "
            "JOIN incidents i ON i.id = e.incident_id WHERE e.id > ? ORDER BY e.id LIMIT ?",
            (after_id, limit)).fetchall()
        names: dict[int, tuple[str, ...]] = {}
        out = []
        for r in rows:
            incident = int(r[1])
            if incident not in names:
                names[incident] = tuple(
                    x[0] or x[1] for x in self.db.execute(
                        "SELECT h.hostname, ih.agent_id FROM incident_hosts ih "
                        "LEFT JOIN hosts h ON h.agent_id = ih.agent_id "
                        "WHERE ih.incident_id = ? AND ih.until IS NULL "
                        "ORDER BY h.hostname, ih.agent_id LIMIT ?",
                        (incident, HOSTNAMES_SHOWN)))
            out.append(AlertIncidentEvent(int(r[0]), incident, r[2], r[3], r[4], r[5], r[6],
                                          r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14],
                                          int(r[15] or 0), r[16], names[incident]))
        return out

    def alert_offline_hosts(self, opened_before: datetime, rule: str,
                            limit: int = 1000) -> list[OffHost]:
        """Open host_offline incidents opened before `opened_before` that `rule` has not
        told yet (no firing row)."""
        rows = self.db.execute(
            "SELECT i.id, i.agent_id, i.opened_at, i.title FROM incidents i "
            "WHERE i.state = 'open' AND i.kind = 'host_offline' AND i.opened_at <= ? "
            "AND i.agent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM alert_firing f "
            "WHERE f.rule = ? AND f.agent_id = i.agent_id AND f.condition = 'host_offline') "
            "ORDER BY i.opened_at LIMIT ?", (iso(opened_before), rule, limit))
        return [OffHost(int(r[0]), r[1], r[2], r[3]) for r in rows]

    def alert_sessions(self, after_id: int, started_by: datetime,
                       limit: int = 1000) -> list[AlertSession]:
        """Remote sessions after `after_id` that started by `started_by`, oldest first.

        Any hub writes these rows; on PostgreSQL a row given a lower id may commit after one
        given a higher, so the dispatcher reads only rows a few seconds old (`started_by`),
        long committed, and a cursor past them skips none.
        """
        rows = self.db.execute(
            "SELECT r.id, r.operator, r.agent_id, h.hostname, a.name, s.name, r.peer, "
            "r.started_at FROM remote_sessions r JOIN agents g ON g.id = r.agent_id "
            "JOIN agencies a ON a.id = g.agency_id JOIN sites s ON s.id = g.site_id "
            "LEFT JOIN hosts h ON h.agent_id = r.agent_id WHERE r.id > ? "
            "AND r.started_at <= ? ORDER BY r.id LIMIT ?", (after_id, iso(started_by), limit))
        return [AlertSession(int(r[0]), *r[1:]) for r in rows]

    def alert_hosts(self, agent_ids: list[str]) -> list[AlertHost]:
        """The facts the host conditions read, of these hosts (those that exist)."""
        out = []
        for start in range(0, len(agent_ids), 500):
            chunk = agent_ids[start:start + 500]
            rows = {r.agent_id: r for r in self.host_rows(None, chunk)}
            marks = ", ".join("?" for _ in chunk)
            for r in self.db.execute(
                    "SELECT agent_id, facts, fullest_volume_percent, clock_skew_s, "  # noqa: S608 - placeholders only
                    f"snapshot, live FROM hosts WHERE agent_id IN ({marks})", chunk):
                row = rows.get(r[0])
                if row is None:
                    continue
                facts = json.loads(r[1]) if r[1] else {}
                out.append(AlertHost(row, facts.get("os_product"), facts.get("os_name"),
                                     facts.get("os_version"), r[2], r[3],
                                     _dropped_reports(r[4], r[5])))
        return out

    def alert_firing(self, rule: str, condition: str, agent_ids: list[str]) -> set[str]:
        """Of these hosts, those `rule` is firing for."""
        firing: set[str] = set()
        for start in range(0, len(agent_ids), 500):
            chunk = agent_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            firing.update(r[0] for r in self.db.execute(
                "SELECT agent_id FROM alert_firing WHERE rule = ? AND condition = ? "  # noqa: S608 - placeholders only
                f"AND agent_id IN ({marks})", (rule, condition, *chunk)))
        return firing

    # --- what the dispatcher writes -----------------------------------------------------

    def queue_alerts(self, notifications: list[Queued], cursors: dict[str, int],
                     fire: list[Firing], clear: list[Firing], at: datetime,
                     max_pending: int = MAX_PENDING_PER_CHANNEL) -> Queueing:
        """One pass of the dispatcher, in one transaction: the notifications (due now), the
        cursors it read up to, the host conditions that began and ended firing.

        A channel with `max_pending` notifications pending gets none of this pass's: they
        are dropped and counted; the first pass that finds its queue below the bound again
        ends the episode with one audit row `alert_dropped` (actor "hub", target the channel,
        detail: dropped, bound, since). Call it each pass while an episode is open (a
        "dropped:" cursor), even with nothing to queue, so that its end is seen."""
        now = iso(at)
        done = Queueing()
        with self._transaction():
            episodes = {r[0].removeprefix(DROPPED): int(r[1]) for r in self.db.execute(
                "SELECT name, position FROM alert_cursors WHERE name LIKE ?", (DROPPED + "%",))}
            channels = sorted({n[0] for n in notifications} | set(episodes))
            pending = self._pending_per_channel(channels)
            room = {c: max_pending - pending.get(c, 0) for c in channels}
            for channel, rule, thread, payload in notifications:
                if room[channel] <= 0:
                    done.dropped[channel] = done.dropped.get(channel, 0) + 1
                    continue
                room[channel] -= 1
                cur = self.db.execute(
                    "INSERT INTO notifications (channel, rule, thread, payload, state, "
                    "attempts, next_at, created_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?) "
                    "RETURNING id", (channel, rule, thread, payload, PENDING, now, now))
                done.ids.append(int(cur.fetchone()[0]))
            cursors = dict(cursors)
            for channel, count in done.dropped.items():
                if channel not in episodes:
                    done.filled.append(channel)
                    cursors[DROPPED_SINCE + channel] = int(at.timestamp())
                cursors[DROPPED + channel] = episodes.get(channel, 0) + count
            for channel, count in episodes.items():
                if channel not in done.dropped and pending.get(channel, 0) < max_pending:
                    self._end_dropping(channel, count, max_pending, at)
                    done.drained[channel] = count
            for name, position in cursors.items():
                self.db.execute("INSERT INTO alert_cursors (name, position) VALUES (?, ?) "
                                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                                (name, position))
            for rule, agent_id, condition in fire:
                self.db.execute("INSERT INTO alert_firing (rule, agent_id, condition, since) "
                                "VALUES (?, ?, ?, ?) ON CONFLICT (rule, agent_id, condition) "
                                "DO NOTHING", (rule, agent_id, condition, now))
            for rule, agent_id, condition in clear:
                self.db.execute("DELETE FROM alert_firing WHERE rule = ? AND agent_id = ? "
                                "AND condition = ?", (rule, agent_id, condition))
        return done

    def _pending_per_channel(self, channels: list[str]) -> dict[str, int]:
        if not channels:
            return {}
        marks = ", ".join("?" for _ in channels)
        return {r[0]: int(r[1]) for r in self.db.execute(
            "SELECT channel, COUNT(*) FROM notifications WHERE state = ? "  # noqa: S608 - placeholders only
            f"AND channel IN ({marks}) GROUP BY channel", (PENDING, *channels))}

    def _end_dropping(self, channel: str, dropped: int, bound: int, at: datetime) -> None:
        """A channel's queue is below the bound again: audit the episode, forget it."""
        row = self.db.execute("SELECT position FROM alert_cursors WHERE name = ?",
                              (DROPPED_SINCE + channel,)).fetchone()
        since = iso(datetime.fromtimestamp(int(row[0]), timezone.utc)) if row else None
        self._audit("hub", "alert_dropped", channel,
                    {"dropped": dropped, "bound": bound, "since": since}, at)
        self.db.execute("DELETE FROM alert_cursors WHERE name IN (?, ?)",
                        (DROPPED + channel, DROPPED_SINCE + channel))

    def forget_alerts(self, rules: list[str], cursors: list[str]) -> None:
        """Drop the firing rows of rules no longer in the rules file, and cursors no longer
        read (hubs gone): a rule added back later starts clean."""
        with self._transaction():
            if rules:
                marks = ", ".join("?" for _ in rules)
                self.db.execute(f"DELETE FROM alert_firing WHERE rule NOT IN ({marks})",  # noqa: S608 - placeholders only
                                rules)
            else:
                self.db.execute("DELETE FROM alert_firing")
            for name in cursors:
                self.db.execute("DELETE FROM alert_cursors WHERE name = ?", (name,))

    # --- the queue ----------------------------------------------------------------------

    def due_notifications(self, now: datetime, limit: int = 200,
                          skip: Sequence[str] = ()) -> list[Notification]:
        """Pending notifications whose time has come, oldest first, leaving out the channels
        in `skip` (waiting after a failure, or busy): their backlog must not fill the page
        and starve the others."""
        marks = ", ".join("?" for _ in skip)
        rows = self.db.execute(f"SELECT {_NOTIFICATION} FROM notifications "  # noqa: S608 - placeholders only
                               "WHERE state = ? AND next_at <= ? "
                               + (f"AND channel NOT IN ({marks}) " if skip else "")
                               + "ORDER BY id LIMIT ?", (PENDING, iso(now), *skip, limit))
        return [Notification(*r) for r in rows]

    def notifications(self, states: list[str], limit: int = 1000) -> list[Notification]:
        """Notifications in these states, newest first (`estate-hub alerts queue`)."""
        marks = ", ".join("?" for _ in states) or "NULL"
        rows = self.db.execute(f"SELECT {_NOTIFICATION} FROM notifications "  # noqa: S608 - placeholders only
                               f"WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
                               (*states, limit))
        return [Notification(*r) for r in rows]

    def notification_sent(self, notification_id: int, at: datetime) -> None:
        with self._transaction():
            self.db.execute("UPDATE notifications SET state = ?, sent_at = ?, "
                            "attempts = attempts + 1, last_error = NULL WHERE id = ?",
                            (SENT, iso(at), notification_id))

    def notification_retry(self, notification_id: int, error: str,
                           next_at: datetime) -> None:
        """A send failed: try again at `next_at`."""
        with self._transaction():
            self.db.execute("UPDATE notifications SET attempts = attempts + 1, "
                            "last_error = ?, next_at = ? WHERE id = ? AND state = ?",
                            (error[:1000], iso(next_at), notification_id, PENDING))

    def notification_failed(self, notification_id: int, error: str, at: datetime) -> bool:
        """Give a notification up (audited `alert_failed`); False when it was not pending."""
        with self._transaction():
            row = self.db.execute("SELECT channel, rule, thread, attempts, created_at "
                                  "FROM notifications WHERE id = ? AND state = ?",
                                  (notification_id, PENDING)).fetchone()
            if row is None:
                return False
            self.db.execute("UPDATE notifications SET state = ?, last_error = ?, next_at = ? "
                            "WHERE id = ?", (FAILED, error[:1000], iso(at), notification_id))
            self._audit("hub", "alert_failed", row[0],
                        {"notification": notification_id, "rule": row[1], "thread": row[2],
                         "attempts": int(row[3]), "queued_at": row[4],
                         "error": error[:500]}, at)
        return True


def _dropped_reports(snapshot: Any, live: Any) -> int | None:
    """`agent.dropped_reports` of a host's last report (None when unknown)."""
    try:
        value = current_report(snapshot, live)["agent"].get("dropped_reports")
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None

