"""Presence across hubs: the registry of running hubs, which hub holds each agent's connection
and under which epoch, and the presence history.

A hub registers at start and heartbeats; it marks an agent online when the agent connects
(taking the connection over from whichever hub held it, epoch + 1) and offline when that
connection ends, only if it still holds it under the same epoch: a hub's late disconnect
cannot take offline an agent that meanwhile reconnected elsewhere. A hub silent past its own
timeout is dead: any live hub removes it and marks its agents offline, in one transaction,
which writers of every process take one at a time (so two hubs sweeping at once mark each
agent once). Nothing here is written per report or per keepalive.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from estate.inventory.store._common import iso, parse_time
from estate.inventory.store._events import OFFLINE, ONLINE, EventRecords
from estate.inventory.store._records import Held, HubRow, Released, Sweep

# Agents held by no registered hub: left by a run before the registry, or by a hub removed
# while its agents' rows still named it.
_ORPHANED = "(connected_hub IS NULL OR connected_hub NOT IN (SELECT id FROM hubs))"


class PresenceRecords(EventRecords):
    # --- one agent's connection ---------------------------------------------------------

    def agent_connected(self, hub_id: str, agent_id: str, at: datetime) -> Held | None:
        """An agent's connection came up on `hub_id`, which now holds it (from whichever hub
        held it before): online, and a new epoch.

        Returns:
            The connection's epoch and the agent's agency; None for an unknown agent.
        """
        with self._transaction():
            row = self.db.execute(
                "UPDATE agents SET connected = 1, connected_hub = ?, epoch = epoch + 1, "
                "connected_at = ? WHERE id = ? RETURNING epoch", (hub_id, iso(at), agent_id)
            ).fetchone()
            if row is None:
                return None
            self.db.execute("INSERT INTO presence (agent_id, at, state) VALUES (?, ?, ?)",
                            (agent_id, iso(at), "online"))
            self._announce(ONLINE, [(agent_id, iso(at), None, 0)])
            agency = self._agency(agent_id)
        return Held(agent_id, int(row[0]), agency)

    def agent_disconnected(self, hub_id: str, agent_id: str, epoch: int,
                           at: datetime) -> str | None:
        """The connection `hub_id` held under `epoch` ended: offline, unless another
        connection (here or on another hub) took the agent over since.

        Returns:
            The agent's agency when it went offline; None when nothing changed.
        """
        with self._transaction():
            cur = self.db.execute(
                "UPDATE agents SET connected = 0, connected_hub = NULL, disconnected_at = ? "
                "WHERE id = ? AND connected_hub = ? AND epoch = ?",
                (iso(at), agent_id, hub_id, epoch))
            if not cur.rowcount:
                return None
            self.db.execute("INSERT INTO presence (agent_id, at, state) VALUES (?, ?, ?)",
                            (agent_id, iso(at), "offline"))
            self._announce(OFFLINE, [(agent_id, iso(at), None, 0)])
            return self._agency(agent_id)

    def set_presence(self, agent_id: str, connected: bool, at: datetime) -> str | None:
        """Record an agent online or offline outside any hub's connection (tests, imports):
        current state and history. Hubs use `agent_connected` and `agent_disconnected`.

        Returns:
            The agent's agency.
        """
        column = "connected_at" if connected else "disconnected_at"
        with self._transaction():
            self.db.execute(f"UPDATE agents SET connected = ?, {column} = ?, "  # noqa: S608 - column is one of two literals
                            "connected_hub = NULL WHERE id = ?",
                            (1 if connected else 0, iso(at), agent_id))
            self.db.execute("INSERT INTO presence (agent_id, at, state) VALUES (?, ?, ?)",
                            (agent_id, iso(at), "online" if connected else "offline"))
            self._announce(ONLINE if connected else OFFLINE, [(agent_id, iso(at), None, 0)])
            row = self.db.execute("SELECT a.name FROM agents g JOIN agencies a "
                                  "ON a.id = g.agency_id WHERE g.id = ?", (agent_id,)).fetchone()
        return row[0] if row else None

    # --- the hub registry ---------------------------------------------------------------

    def register_hub(self, hub_id: str, address: str | None, timeout_s: float,
                     version: str | None, at: datetime) -> list[Released]:
        """At a hub's start: its row in the registry (new, or its previous run's), and the
        agents its previous run held (maybe killed) and those no registered hub holds marked
        offline; the remote sessions its previous run relayed, and those of no registered
        hub, ended. Other hubs' agents and sessions are left alone.

        This store object writes `hub_id`'s watch events from now on, the offline events of
        the agents released here first.

        Returns:
            The agents marked offline.
        """
        with self._transaction():
            events_from = self._start_events(hub_id)
            released = self._release("connected_hub = ?", (hub_id,), at)
            released += self._release(_ORPHANED, (), at)
            self.db.execute("UPDATE agents SET remote_offered = 0 WHERE remote_offered = 1 "
                            "AND connected = 0")
            self._end_sessions("(hub_id = ? OR hub_id IS NULL OR hub_id NOT IN "
                               "(SELECT id FROM hubs))", (hub_id,), "hub restarted", at)
            self.db.execute(
                "INSERT INTO hubs (id, address, started_at, heartbeat_at, timeout_s, agents, "
                "reports_per_s, version, events_from) VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET address = excluded.address, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "timeout_s = excluded.timeout_s, agents = 0, reports_per_s = 0, "
                "version = excluded.version, events_from = excluded.events_from",
                (hub_id, address, iso(at), iso(at), timeout_s, version, events_from))
        return released

    def hub_heartbeat(self, hub_id: str, agents: int, reports_per_s: float,
                      at: datetime) -> bool:
        """A live hub's heartbeat, with what it holds and does.

        Returns:
            False when the hub has no row: another hub found it silent past its timeout (a
            long pause, the store out of reach) and marked its agents offline; it must
            `rejoin_hub`.
        """
        with self._transaction():
            cur = self.db.execute("UPDATE hubs SET heartbeat_at = ?, agents = ?, "
                                  "reports_per_s = ? WHERE id = ?",
                                  (iso(at), agents, reports_per_s, hub_id))
        return cur.rowcount > 0

    def rejoin_hub(self, hub_id: str, address: str | None, timeout_s: float,
                   version: str | None, started_at: datetime, agent_ids: list[str],
                   at: datetime) -> list[Held]:
        """A hub taken for dead but alive registers again and takes back the agents it still
        holds connections of, unless another hub holds them now.

        Returns:
            The agents taken back (online again), with their new epochs.
        """
        held: list[Held] = []
        with self._transaction():
            # A hub that finds it now reads its events from the start of its run: those it
            # wrote while taken for dead too (the registry did not name it then).
            events_from = self._run_events_from(hub_id)
            self.db.execute(
                "INSERT INTO hubs (id, address, started_at, heartbeat_at, timeout_s, agents, "
                "reports_per_s, version, events_from) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (hub_id, address, iso(started_at), iso(at), timeout_s, len(agent_ids),
                 version, events_from))
            for agent_id in agent_ids:
                row = self.db.execute(
                    "UPDATE agents SET connected = 1, connected_hub = ?, epoch = epoch + 1, "
                    "connected_at = ? WHERE id = ? AND connected_hub IS NULL RETURNING epoch",
                    (hub_id, iso(at), agent_id)).fetchone()
                if row is not None:
                    self.db.execute("INSERT INTO presence (agent_id, at, state) "
                                    "VALUES (?, ?, ?)", (agent_id, iso(at), "online"))
                    held.append(Held(agent_id, int(row[0]), self._agency(agent_id)))
            self._announce(ONLINE, [(h.agent_id, iso(at), None, 0) for h in held])
        return held

    def sweep_hubs(self, hub_id: str, at: datetime) -> Sweep:
        """Remove the hubs other than `hub_id` whose heartbeat is older than their timeout,
        marking their agents offline. A read when none is dead (every heartbeat of every hub
        calls this); the removal is one transaction that looks again, so of two hubs sweeping
        at once the second finds nothing left."""
        if not self._dead_hubs(hub_id, at):
            return Sweep([], [])
        released: list[Released] = []
        with self._transaction():
            dead = self._dead_hubs(hub_id, at)
            for dead_id in dead:
                released += self._release("connected_hub = ?", (dead_id,), at)
                self._end_sessions("hub_id = ?", (dead_id,), "hub stopped responding", at)
                self.db.execute("DELETE FROM hubs WHERE id = ?", (dead_id,))
        return Sweep(dead, released)

    def unregister_hub(self, hub_id: str, at: datetime) -> list[Released]:
        """At a hub's clean stop: its agents offline, its row removed.

        Returns:
            The agents marked offline.
        """
        with self._transaction():
            released = self._release("connected_hub = ?", (hub_id,), at)
            self.db.execute("DELETE FROM hubs WHERE id = ?", (hub_id,))
        return released

    def hubs(self) -> list[HubRow]:
        """The registered hubs by name, dead ones (past their timeout, not yet removed)
        included."""
        rows = self.db.execute("SELECT id, address, started_at, heartbeat_at, timeout_s, "
                               "agents, reports_per_s, version FROM hubs ORDER BY id")
        return [HubRow(*r) for r in rows]

    # --- shared -------------------------------------------------------------------------

    def _agency(self, agent_id: str) -> str:
        return str(self.db.execute("SELECT a.name FROM agents g JOIN agencies a "
                                   "ON a.id = g.agency_id WHERE g.id = ?",
                                   (agent_id,)).fetchone()[0])

    def _dead_hubs(self, hub_id: str, at: datetime) -> list[str]:
        rows = self.db.execute("SELECT id, heartbeat_at, timeout_s FROM hubs WHERE id != ? "
                               "ORDER BY id", (hub_id,)).fetchall()
        return [r[0] for r in rows
                if parse_time(r[1]) + timedelta(seconds=r[2]) < at]

    def _end_sessions(self, where: str, params: tuple[Any, ...], reason: str,
                      at: datetime) -> None:
        """Inside a transaction: the live remote sessions `where` selects are over (their
        hub is gone; nothing relays them any more)."""
        self.db.execute("UPDATE remote_sessions SET ended_at = ?, end_reason = ? "  # noqa: S608 - where is a literal of this module
                        f"WHERE ended_at IS NULL AND {where}", (iso(at), reason, *params))

    def _release(self, where: str, params: tuple[Any, ...], at: datetime) -> list[Released]:
        """Inside a transaction: the connected agents `where` selects go offline (with a
        presence row each) and are held by no hub; their offers of remote access went with
        their connections."""
        rows = self.db.execute(
            "SELECT g.id, a.name FROM agents g JOIN agencies a ON a.id = g.agency_id "  # noqa: S608 - where is a literal of this module
            f"WHERE g.connected = 1 AND {where} ORDER BY g.id", params).fetchall()
        if rows:
            self.db.execute("INSERT INTO presence (agent_id, at, state) SELECT id, ?, "  # noqa: S608 - as above
                            f"'offline' FROM agents WHERE connected = 1 AND {where}",
                            (iso(at), *params))
            # Announced by the hub releasing them: a dead hub writes nothing more.
            self._announce(OFFLINE, [(r[0], iso(at), None, 0) for r in rows])
        self.db.execute("UPDATE agents SET connected = 0, connected_hub = NULL, "  # noqa: S608 - as above
                        "remote_offered = 0, disconnected_at = ? WHERE connected = 1 "
                        f"AND {where}", (iso(at), *params))
        return [Released(r[0], r[1]) for r in rows]
