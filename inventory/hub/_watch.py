"""Watch fan-out: every hub's host, presence and change events, read from the store, to every
`estate-watch v1` channel whose operator may see them, without buffering without bound for
slow watchers."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from estate.inventory.hub._presence import Presence
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.store import ChangeNotice, Event, HostRow, StoreInterface, utcnow

log = logging.getLogger("estate.hub")

# Bytes a slow watcher's channel may hold unsent before it is told to resync (then nothing
# more until it has caught up), and for all watchers together: with --max-watchers of them
# stalled, the hub holds at most the total, not 1,000 x the per-watcher backlog.
WATCH_BACKLOG_BYTES = 256 * 1024
WATCH_BACKLOG_TOTAL = 64 * 1024 * 1024
# Host rows read per store call when many agents change presence at once (a dead hub's):
# other store work runs between the reads.
ROWS_AT_ONCE = 500
# Events read per hub per store call; a backlog is read a page at a time.
EVENTS_AT_ONCE = 2000
# The reader reads this often even when nothing woke it (a notification lost with the
# listener's connection); the listener's wait, which bounds how long the hub's stop waits.
POLL_S = 2.0
LISTEN_WAIT_S = 1.0


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
    """The open watchers, and the one reader that tells them every hub's events.

    Whatever announces something (this hub's writer, a presence change here or on another
    hub, a sweep of a dead hub) writes an event to the store in the transaction that makes it
    true (`estate.inventory.store._events`); the reader reads the events after its cursor of
    each hub, its own included (one path on both backends), loads the host rows they name
    and publishes them. It wakes when this hub committed something (`wake`), when the store
    says another hub did (PostgreSQL's NOTIFY, heard by the listener thread's connection),
    and every POLL_S seconds in case a notification was lost. A hub's death loses nothing:
    what it committed is in the table, what it did not was not acknowledged.
    """

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks,
                 presence: Presence) -> None:
        self._db, self._store, self._tasks, self._presence = db, store, tasks, presence
        self.watchers: set[Watcher] = set()
        self.cursors: dict[str, int] = {}  # hub id -> the seq of its last event read
        # Told when an agent of any hub went online or offline (the incident correlator:
        # presence is what it watches, and these events already come here).
        self.on_presence: Callable[[], None] | None = None
        self._wake: asyncio.Event | None = None
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()

    async def start(self) -> None:
        """At hub start: events already written are history, not events."""
        self.cursors = await self._db(self._store.event_heads)
        self._wake = asyncio.Event()
        self._tasks.spawn(self._read_loop())
        self._listener = threading.Thread(target=self._listen,
                                          args=(asyncio.get_running_loop(), self._wake),
                                          name="estate-hub-listener", daemon=True)
        self._listener.start()

    async def stop(self) -> None:
        """Before the store closes: the listener thread ends within its wait."""
        self._stop_listening.set()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, LISTEN_WAIT_S + 5)

    def wake(self) -> None:
        """Something was committed here: read the events now."""
        if self._wake is not None:
            self._wake.set()

    def _listen(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        """The listener thread: wait on the store for other hubs' events, wake the reader."""
        while not self._stop_listening.is_set():
            try:
                woken = self._store.wait_for_events(LISTEN_WAIT_S)
            except Exception:  # its own connection; the reader still polls
                log.exception("listening for other hubs' events failed")
                time.sleep(LISTEN_WAIT_S)
                woken = True
            if woken and not self._stop_listening.is_set():
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: the hub has stopped
                    return

    async def _read_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.read():
                    pass
            except Exception:  # the next wake-up or poll reads from the same cursors
                log_failure(log, "reading watch events failed")

    async def read(self) -> bool:
        """Read the events after the cursors and publish them; True when there are more."""
        page = await self._db(self._store.events_after, self.cursors, EVENTS_AT_ONCE)
        # Watchers are looked at after the read: one subscribed before an event was
        # committed is told of it, since the read that finds the event ends after that.
        if self.watchers and page.events:
            await self._publish_events(page.events)
        self.cursors = page.cursors
        if self.on_presence is not None and any(e.kind in ("online", "offline")
                                                for e in page.events):
            self.on_presence()
        return page.more

    async def _publish_events(self, events: list[Event]) -> None:
        incidents = [e for e in events if e.kind == "incident"]
        if incidents:
            await self._publish_incidents(incidents)
            events = [e for e in events if e.kind != "incident"]
        for start in range(0, len(events), ROWS_AT_ONCE):
            part = events[start:start + ROWS_AT_ONCE]
            # Host rows as they are now, a store call per part: other store work runs
            # between them when a dead hub's thousands of agents go offline at once.
            rows = {row.agent_id: row for row in await self._db(
                self._store.host_rows, None, sorted({e.agent_id for e in part}))}
            wanted = [(e.agent_id, e.at, e.report_id) for e in part
                      if e.change_count and e.report_id is not None]
            changes = await self._db(self._store.report_changes, wanted) if wanted else {}
            for event in part:
                self._publish_event(event, rows.get(event.agent_id), changes)

    async def _publish_incidents(self, events: list[Event]) -> None:
        """Each incident as it is now, once per read however many of its events came, to
        the watchers whose scope has its agency."""
        ids = sorted({int(e.report_id) for e in events if e.report_id})
        for start in range(0, len(ids), ROWS_AT_ONCE):
            for incident in await self._db(self._store.incidents_by_ids,
                                           ids[start:start + ROWS_AT_ONCE]):
                self.publish({"type": "incident", "incident": incident.as_dict()},
                             incident.agency)

    def _publish_event(self, event: Event, row: HostRow | None,
                       changes: dict[tuple[str, str], list[ChangeNotice]]) -> None:
        if event.kind != "host":  # "online" or "offline"
            online = event.kind == "online"
            if event.agency is not None:
                self.publish({"type": "presence", "agent_id": event.agent_id,
                              "status": row.status if row else
                              ("online" if online else "offline"), "row": row},
                             event.agency)
            return
        if row is None:
            return  # an agent with no host row has nothing to show
        if event.report_id is None:  # not a report: its row changed (remote access)
            self.publish({"type": "host", "row": row}, row.agency)
            return
        self.publish({"type": "host", "row": row, "report_id": event.report_id}, row.agency)
        for change in changes.get((event.agent_id, event.report_id), ()):
            self.publish({"type": "change", **change.as_dict()}, change.agency)

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
        """An agent's first connection came or its last went: record it (the store writes
        the event, unless another hub took the agent over meanwhile: nothing changed)."""
        if self._tasks.stopping:
            return  # stop() marks this hub's agents offline itself
        try:
            await self._db(self._presence.record, agent_id, connected, utcnow())
        except Exception:  # the next report shows the host again
            log_failure(log, "recording %s %s failed", agent_id,
                        "online" if connected else "offline")
            return
        self.wake()

    async def presence_changed(self, agents: list[tuple[str, str]], connected: bool) -> None:
        """Agents (id, agency) now online or offline without a connection here changing (a
        dead hub's, swept; this hub's, taken back): the store wrote their events."""
        self.wake()

    async def refresh_host(self, agent_id: str) -> None:
        """A host's row changed outside a report (its remote-access offer): the store wrote
        a host event."""
        self.wake()

    async def committed(self, agent_ids: list[str]) -> None:
        """After a batch commit: its host events (and their changes) are in the store."""
        self.wake()
