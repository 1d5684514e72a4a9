"""Access withdrawn is access ended: open connections of revoked agents and removed or changed
operators are closed within about a second.

`estate-hub agent revoke` and `estate-hub operator remove` run as other processes against the
same store, so the hub cannot be told; it looks. Every `CHECK_INTERVAL_S` it reads the store's
access counter (`Store.access_version`, one row, moved in the transaction of every such change)
and only when it moved re-reads the records of the agents and operators it has connected. A
counter of every commit would move with every other hub's report batch, and each hub would
re-read every connected agent's record every second (half a hub's CPU during a login storm).
A connection whose access is gone, or an operator whose role, agencies or key changed, is
ended: its remote sessions end with the reason, an `access_ended` audit row is written, and
the SSH connection is disconnected with the reason. A changed operator is closed rather than
re-scoped in place: their console reconnects with the new scope, and no half-old state
(an open watch, an export underway) survives the change.

Between the change and the loop seeing it, `refusal(conn)` is checked on every new channel,
API request, report and forward, so nothing new starts on a connection being ended.
"""

from __future__ import annotations

import asyncio
import logging

import asyncssh

from estate.inventory.hub._peer import Login
from estate.inventory.hub._remote import RemoteAccess
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.store import StoreInterface

log = logging.getLogger("estate.hub.access")

CHECK_INTERVAL_S = 1.0
# A backstop in case a change slips past the counter (a record edited by hand, a restored
# backup): re-read the records this often anyway.
FULL_CHECK_S = 600.0


class AccessGuard:
    """The hub's authenticated connections by agent id and operator name, and the loop that
    ends the ones whose access was withdrawn."""

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks,
                 remote: RemoteAccess) -> None:
        self.db, self.store, self.tasks, self.remote = db, store, tasks, remote
        self.connections: dict[str, set[Login]] = {}  # username -> open connections
        self.agents_held = 0  # agents with a connection open (`serve --max-agents`)
        self.ended: dict[Login, str] = {}  # being closed, and why
        self.version = 0  # bumped whenever the store's access counter moved
        self._access_version: int | None = None

    # --- the registry -------------------------------------------------------------------

    def add(self, conn: Login) -> None:
        """A login completed (agents and operators; `enrol` has no access to withdraw)."""
        if conn.peer.role in ("agent", "operator"):
            if conn.peer.role == "agent" and conn.peer.name not in self.connections:
                self.agents_held += 1
            self.connections.setdefault(conn.peer.name, set()).add(conn)
            if conn.access_version != self.version:
                # The records changed while this login was being checked: look at this one
                # again now rather than trusting what validate_public_key read. Only this
                # one: re-reading everyone's on each such login, in a login storm, made each
                # check end after more logins, each starting another.
                self.tasks.spawn(self.check({conn.peer.name: [conn]}))

    def discard(self, conn: Login) -> None:
        conns = self.connections.get(conn.peer.name)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.connections[conn.peer.name]
                if conn.peer.role == "agent":
                    self.agents_held -= 1
        self.ended.pop(conn, None)

    def refusal(self, conn: Login) -> str | None:
        """Why this connection may start nothing new (its access ended), or None."""
        return self.ended.get(conn)

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Every second: if the records changed, end what lost its access. Until cancelled."""
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                changed = await self.db(self._records_changed)
                if changed:
                    self.version += 1
                if changed or loop.time() - last_full >= FULL_CHECK_S:
                    last_full = loop.time()
                    await self.check()
            except Exception:
                log_failure(log, "checking access of open connections failed")

    def _records_changed(self) -> bool:
        """On the store thread: has anyone changed who may log in since the last look? The
        first look counts as a change: a revocation between a login's check and this first
        reading of the counter would otherwise wait for the full check, ten minutes on."""
        version = self.store.access_version()
        changed = self._access_version is None or version != self._access_version
        self._access_version = version
        return changed

    async def check(self, only: dict[str, list[Login]] | None = None) -> None:
        """Re-read the records of everyone connected (or `only` these) and end what lost
        its access."""
        snapshot = only or {name: list(conns) for name, conns in self.connections.items()}
        if not snapshot:
            return
        verdicts = await self.db(self._verdicts, snapshot)
        for conn, reason in verdicts:
            self.end(conn, reason)

    def _verdicts(self, snapshot: dict[str, list[Login]]) -> list[tuple[Login, str]]:
        """On the store thread: (connection, reason) for each that lost its access."""
        store = self.store
        out: list[tuple[Login, str]] = []
        agents = store.agent_access([name for name, conns in snapshot.items()
                                     if conns and conns[0].peer.role == "agent"])
        for name, conns in snapshot.items():
            for conn in conns:
                fp = conn.peer.key.get_fingerprint("sha256")
                if conn.peer.role == "agent":
                    agent = agents.get(name)
                    if agent is None:
                        out.append((conn, "agent removed"))
                    elif agent[1]:
                        out.append((conn, "agent revoked"))
                    elif agent[0] != fp:
                        out.append((conn, "agent key changed"))
                elif conn.peer.role == "operator":
                    record = store.operator(name)
                    before = conn.peer.operator
                    if record is None:
                        out.append((conn, "operator removed"))
                    elif record.key_fingerprint != fp:
                        out.append((conn, "operator key changed"))
                    elif before is None or \
                            (record.role, record.agencies) != (before.role, before.agencies):
                        out.append((conn, "operator role or agencies changed"))
        return out

    def end(self, conn: Login, reason: str) -> None:
        """End one connection's access: its sessions, an audit row, then the connection."""
        if conn in self.ended:
            return
        self.ended[conn] = reason
        peer = conn.peer
        for bridge in list(self.remote.live.values()):
            if (peer.role == "operator" and bridge.operator_name == peer.name) or \
                    (peer.role == "agent" and bridge.agent_id == peer.name):
                bridge.end(reason)
        log.warning("conn %s user %s: access ended (%s); closing", peer.address, peer.name,
                    reason)
        self.tasks.spawn(self.db(self.store.audit, "hub", "access_ended", peer.name,
                                 {"reason": reason, "role": peer.role, "peer": peer.address}))
        conn.ssh.disconnect(asyncssh.DISC_BY_APPLICATION, f"access ended: {reason}")

    def channel_refusal(self, conn: Login) -> asyncssh.ChannelOpenError | None:
        """The channel-open refusal for a connection whose access ended, or None."""
        reason = self.refusal(conn)
        if reason is None:
            return None
        return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                         f"access ended: {reason}")
