"""The store's remote-access records: which agents may be reached, and every relayed session."""

from __future__ import annotations

from datetime import datetime

from estate.inventory.store._audit import AuditLog
from estate.inventory.store._common import _scoped, iso, utcnow
from estate.inventory.store._events import HOST, EventRecords
from estate.inventory.store._records import RemoteTarget, Session, SessionEnd


def remote_state(allowed: int, offered: int, connected: int, revoked: str | None) -> str:
    """What the console shows: ready (reachable now), allowed (hub allows, the agent has not
    offered), asked (the agent offers, the hub does not allow), off."""
    if revoked:
        return "off"
    if allowed:
        return "ready" if offered and connected else "allowed"
    return "asked" if offered and connected else "off"


def _hubs_named(hub_id: str | None, agent_hub: str | None) -> dict[str, str | None]:
    """What a session's audit rows add when it crossed hubs: the operator's hub and the
    agent's. A session on one hub adds nothing (its rows read as they always did)."""
    return {"hub": hub_id, "agent_hub": agent_hub} if agent_hub else {}


class RemoteRecords(AuditLog, EventRecords):
    def set_remote_access(self, agent_id: str, allowed: bool, actor: str) -> bool:
        """Allow or deny remote access to an agent's host (audited); False if no such agent."""
        with self._transaction():
            cur = self.db.execute("UPDATE agents SET remote_access = ? WHERE id = ?",
                                  (1 if allowed else 0, agent_id))
            if cur.rowcount:
                self._audit(actor, "agent_allow_remote" if allowed else "agent_deny_remote",
                            agent_id)
        return cur.rowcount > 0

    def remote_allowed(self, agent_id: str) -> bool:
        row = self.db.execute("SELECT remote_access FROM agents WHERE id = ? "
                              "AND revoked_at IS NULL", (agent_id,)).fetchone()
        return bool(row and row[0])

    def set_remote_offered(self, agent_id: str, offered: bool) -> None:
        """The agent's live connection offers remote access, or no longer does: its host
        row shows it, so every hub's watchers hear of it (a host event)."""
        with self._transaction():
            self.db.execute("UPDATE agents SET remote_offered = ? WHERE id = ?",
                            (1 if offered else 0, agent_id))
            self._announce(HOST, [(agent_id, iso(utcnow()), None, 0)])

    def remote_targets(self, host: str, scope: list[str] | None) -> list[RemoteTarget]:
        """Hosts in scope whose id is `host`, else whose hostname is (case-insensitive)."""
        base = ("SELECT h.agent_id, h.hostname, a.name AS agency, s.name AS site, "
                "g.remote_access, g.remote_offered, g.connected, g.revoked_at, g.connected_hub "
                "FROM hosts h JOIN agents g ON g.id = h.agent_id "
                "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
                "WHERE ")
        for where, value in (("h.agent_id = ?", host), ("lower(h.hostname) = lower(?)", host)):
            sql, args = _scoped(base + where, [value], scope)
            rows = self.db.execute(sql + " ORDER BY h.agent_id LIMIT 10", args).fetchall()
            if rows:
                return [RemoteTarget(**dict(r), remote=remote_state(
                            r["remote_access"], r["remote_offered"], r["connected"],
                            r["revoked_at"]))
                        for r in rows]
        return []

    # --- sessions -----------------------------------------------------------------------

    def session_started(self, operator: str, agent_id: str, peer: str, at: datetime,
                        hub_id: str | None = None, agent_hub: str | None = None) -> int:
        """A session `hub_id` relays began (audited); its id. `agent_hub`: the other hub
        holding the agent's connection, which `hub_id` reached over a hub-to-hub link; the
        audit row then names both."""
        with self._transaction():
            cur = self.db.execute(
                "INSERT INTO remote_sessions (operator, agent_id, peer, started_at, hub_id) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id", (operator, agent_id, peer, iso(at),
                                                        hub_id))
            session_id = int(cur.fetchone()[0])
            self._audit(f"operator:{operator}", "remote_session_start", agent_id,
                        {"session": session_id, "peer": peer,
                         **_hubs_named(hub_id, agent_hub)}, at)
        return session_id

    def session_ended(self, session_id: int, to_host: int, from_host: int, reason: str,
                      at: datetime, agent_hub: str | None = None) -> None:
        """A session ended (audited once); `agent_hub` as `session_started` was given it."""
        with self._transaction():
            row = self.db.execute("SELECT operator, agent_id, hub_id FROM remote_sessions "
                                  "WHERE id = ? AND ended_at IS NULL",
                                  (session_id,)).fetchone()
            if row is None:
                return
            self.db.execute("UPDATE remote_sessions SET ended_at = ?, bytes_to_host = ?, "
                            "bytes_from_host = ?, end_reason = ? WHERE id = ?",
                            (iso(at), to_host, from_host, reason, session_id))
            self._audit(f"operator:{row[0]}", "remote_session_end", row[1],
                        {"session": session_id, "bytes_to_host": to_host,
                         "bytes_from_host": from_host, "reason": reason,
                         **_hubs_named(row[2], agent_hub)}, at)

    def sessions(self, live_only: bool = False, limit: int = 100) -> list[Session]:
        sql = ("SELECT r.id, r.operator, r.agent_id, h.hostname, r.peer, r.started_at, "
               "r.ended_at, r.bytes_to_host, r.bytes_from_host, r.end_reason "
               "FROM remote_sessions r LEFT JOIN hosts h ON h.agent_id = r.agent_id")
        if live_only:
            sql += " WHERE r.ended_at IS NULL"
        rows = self.db.execute(sql + " ORDER BY r.id DESC LIMIT ?", (limit,))
        return [Session(*r) for r in rows]

    def request_session_end(self, session_id: int, actor: str) -> bool:
        """Ask the running hub to end a live session (it looks every second); audited."""
        with self._transaction():
            cur = self.db.execute("UPDATE remote_sessions SET end_requested_by = ? "
                                  "WHERE id = ? AND ended_at IS NULL", (actor, session_id))
            if cur.rowcount:
                self._audit(actor, "remote_session_end_request", str(session_id))
        return cur.rowcount > 0

    def sessions_to_end(self, session_ids: list[int]) -> list[SessionEnd]:
        """Of these live sessions, those an admin ended or whose host lost remote access."""
        if not session_ids:
            return []
        marks = ", ".join("?" for _ in session_ids)
        sql = ("SELECT r.id, r.end_requested_by, g.remote_access, g.revoked_at "  # noqa: S608 - placeholders only
               "FROM remote_sessions r JOIN agents g ON g.id = r.agent_id "
               f"WHERE r.id IN ({marks}) AND (r.end_requested_by IS NOT NULL "
               "OR g.remote_access = 0 OR g.revoked_at IS NOT NULL)")
        rows = self.db.execute(sql, session_ids)
        out = []
        for r in rows:
            if r[1]:
                out.append(SessionEnd(int(r[0]), f"ended by {r[1]}"))
            elif r[3]:
                out.append(SessionEnd(int(r[0]), "agent revoked"))
            else:
                out.append(SessionEnd(int(r[0]), "remote access denied"))
        return out

