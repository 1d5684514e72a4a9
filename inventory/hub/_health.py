"""The incident correlator as a hub task: on the hub holding the lease "correlator", a pass
whenever presence changes (this hub's watch reader hears every hub's online and offline
events), and on a slow timer for what time alone changes (a resolution's hold, a host's
grace) and for hosts whose connectivity verdict moved (`hosts.net_at`). Nothing is done per
report: ingest costs the same with the correlator on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from estate.inventory.health._correlate import Correlator, Thresholds
from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import Tasks, log_failure
from estate.inventory.store import StoreInterface, utcnow

log = logging.getLogger("estate.hub")

LEASE = "correlator"
# Presence events come in bursts (a site's hundreds of agents dropping within a second):
# one pass after the burst's first event gathers the rest rather than one pass each.
GATHER_S = 0.2


class IncidentTask:
    """Runs the correlator while this hub holds its lease; wakes the watch after a change."""

    def __init__(self, db: StoreThread, store: StoreInterface, tasks: Tasks,
                 thresholds: Thresholds,
                 on_change: Callable[[], None] | None = None) -> None:
        self._db, self._store, self._tasks = db, store, tasks
        self.thresholds = thresholds
        self.correlator = Correlator(thresholds)
        self.hub_id = ""
        self.leading = False
        self._wake = asyncio.Event()
        self._on_change = on_change  # called (no arguments) after incidents changed
        # The lease lasts three ticks: a hub that dies hands over within that, and one late
        # pass does not lose it.
        self.ttl_s = 3 * thresholds.tick_s

    def wake(self) -> None:
        """Presence changed somewhere: a pass soon."""
        self._wake.set()

    async def run(self, hub_id: str) -> None:
        self.hub_id = hub_id
        while not self._tasks.stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.thresholds.tick_s)
                await asyncio.sleep(GATHER_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                changed = await self._db(self._pass)
            except Exception:
                log_failure(log, "correlating incidents failed")
                continue
            if changed and self._on_change is not None:
                self._on_change()

    def _pass(self) -> int:
        """On the store thread: renew the lease, read, plan, apply. Returns the incidents
        changed.

        Timed by the store thread's clock as it reads, not when the pass was asked for: a
        pass that waited behind other store work (or for a lock) would otherwise read hosts
        gone offline meanwhile against an earlier time, and forget them as news before the
        next pass."""
        held = self._store.take_lease(LEASE, self.hub_id, self.ttl_s, utcnow())
        if held != self.leading:
            log.info("incident correlator %s on this hub", "running" if held else "stopped")
            self.leading = held
            self.correlator.reset()
        if not held:
            return 0
        now = utcnow()  # after the lease's write, which may have waited for the store's lock
        inputs = self._store.health_inputs(self.correlator.net_position,
                                           timedelta(seconds=self.thresholds.hold_s), now)
        actions = self.correlator.plan(inputs, now)
        if not actions:
            return 0
        return len(self._store.apply_health(actions, self.hub_id, now))

    async def stop(self) -> None:
        """Hand the lease over at once (another hub's next pass takes it)."""
        if self.leading and self.hub_id:
            try:
                await self._db(self._store.release_lease, LEASE, self.hub_id)
            except Exception:
                log_failure(log, "releasing the correlator's lease failed")
