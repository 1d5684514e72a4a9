"""Watch fan-out: host, presence and change events, to every `estate-watch v1` channel whose
operator may see them, without buffering without bound for slow watchers."""

from __future__ import annotations

import json
import logging
from typing import Any

from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.store import StoreInterface, utcnow

log = logging.getLogger("estate.hub")

# Bytes a slow watcher's channel may hold unsent before it is told to resync (then nothing
# more until it has caught up), and for all watchers together: with --max-watchers of them
# stalled, the hub holds at most the total, not 1,000 x the per-watcher backlog.
WATCH_BACKLOG_BYTES = 256 * 1024
WATCH_BACKLOG_TOTAL = 64 * 1024 * 1024


class Watcher:
    """One `estate-watch v1` channel: events in the operator's scope, as JSON lines.

    A watcher holding more than WATCH_BACKLOG_BYTES unsent (a stalled console), or any
    behind one while all watchers together hold WATCH_BACKLOG_TOTAL, is sent one `resync`
    event instead of the ones it missed, and reloads; the hub never buffers without bound
    for slow clients.
    """

    def __init__(self, chan: Any, scope: list[str] | None, operator: str = "") -> None:
        self.chan, self.scope, self.operator = chan, scope, operator
        self.behind = False

    def backlog(self) -> int:
        try:
            return int(self.chan.get_write_buffer_size())
        except Exception:  # a closing channel holds nothing the hub can still send
            return 0

    def offer(self, line: bytes, over_total: bool) -> None:
        """Send one encoded event line (Watch.publish has checked the scope)."""
        backlog = self.backlog()
        if backlog > WATCH_BACKLOG_BYTES or (over_total and backlog > 0):
            if not self.behind:
                self.behind = True
                self.chan.write(b'{"type": "resync"}\n')
            return
        self.behind = False
        try:
            self.chan.write(line)
        except Exception:  # one broken watcher (a closing channel) must not stop the others
            log.exception("sending a watch event failed")


class Watch:
    """The open watchers, and the events the rest of the hub tells them about."""

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks) -> None:
        self._db, self._store, self._tasks = db, store, tasks
        self.watchers: set[Watcher] = set()
        self.last_change_id = 0  # the newest change event watchers have been sent

    async def start(self) -> None:
        """At hub start: changes already stored are history, not events."""
        self.last_change_id = await self._db(self._store.last_change_id)

    def publish(self, event: dict[str, Any], agency: str | None) -> None:
        watchers = [w for w in self.watchers if w.scope is None or agency in w.scope]
        if not watchers:
            return
        # Encoded once for every watcher (80 watchers each encoding 200 changes a report took
        # the event loop for seconds); the hub-wide backlog summed once per event.
        line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        over = sum(w.backlog() for w in self.watchers) > WATCH_BACKLOG_TOTAL
        for watcher in watchers:
            watcher.offer(line, over)

    async def presence(self, agent_id: str, connected: bool) -> None:
        """An agent's first connection came or its last went: record it, tell watchers."""
        if self._tasks.stopping:
            return  # stop() marks everyone offline itself
        try:
            agency = await self._db(self._store.set_presence, agent_id, connected, utcnow())
        except Exception:  # the next report shows the host again
            log_failure(log, "recording %s %s failed", agent_id,
                        "online" if connected else "offline")
            return
        if self.watchers:
            rows = await self._db(self._store.host_rows, None, [agent_id])
            self.publish({"type": "presence", "agent_id": agent_id,
                          "status": rows[0].status if rows else
                          ("online" if connected else "offline"),
                          "row": rows[0] if rows else None}, agency)

    async def refresh_host(self, agent_id: str) -> None:
        """Send watchers a host's current row (after something not in a report changed)."""
        if self.watchers:
            for row in await self._db(self._store.host_rows, None, [agent_id]):
                self.publish({"type": "host", "row": row}, row.agency)

    async def committed(self, agent_ids: list[str]) -> None:
        """After a batch commit: tell watchers about updated hosts and new changes."""
        if not self.watchers:
            self.last_change_id = await self._db(self._store.last_change_id)
            return
        rows = await self._db(self._store.host_rows, None, sorted(set(agent_ids)))
        for row in rows:
            self.publish({"type": "host", "row": row}, row.agency)
        changes = await self._db(self._store.changes_after, self.last_change_id)
        for change in changes:
            self.last_change_id = max(self.last_change_id, change.id)
            self.publish({"type": "change", **change.as_dict()}, change.agency)
