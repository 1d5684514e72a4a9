"""This hub in the store's registry of hubs: the agents' connections it holds (their epochs),
its heartbeat, and the removal of hubs that died (`estate.inventory.store._presence`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import log_failure
from estate.inventory.store import Held, Released, StoreInterface, utcnow

log = logging.getLogger("estate.hub")

# Every hub tells the registry it is alive this often; one silent past its timeout (three
# missed heartbeats) is taken for dead by the others, which mark its agents offline.
HEARTBEAT_S = 10.0
HUB_TIMEOUT_S = 30.0

# Told of agents whose presence changed without a connection of theirs here changing:
# (agent id, agency) pairs, and whether they are now online.
OnChange = Callable[[list[tuple[str, str]], bool], Awaitable[None]]


class Presence:
    """The agents this hub holds in the store, and its row in the hub registry."""

    def __init__(self, db: StoreThread, store: StoreInterface, heartbeat_s: float,
                 timeout_s: float) -> None:
        self._db, self._store = db, store
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self.hub_id = ""
        self.address: str | None = None
        self.started_at = utcnow()
        # Agent id -> the epoch of the connection this hub holds. Read and written on the
        # store thread only, whose jobs run in the order submitted: an agent's disconnect
        # finds the epoch its connect got, even when submitted before that connect returned.
        self._epochs: dict[str, int] = {}
        self._reports = 0  # stored since the last heartbeat
        self._since = time.monotonic()

    async def start(self, hub_id: str, address: str) -> None:
        """Register: the agents this hub's previous run held (it may have been killed) and
        those no registered hub holds are marked offline; other hubs' are left alone."""
        self.hub_id, self.address, self.started_at = hub_id, address, utcnow()
        released = await self._db(self._store.register_hub, hub_id, address, self.timeout_s,
                                  estate_version(), self.started_at)
        log.info("registered as hub %s%s", hub_id,
                 f"; {len(released)} agents left connected by an earlier run marked offline"
                 if released else "")

    async def stop(self) -> None:
        """A clean stop: this hub's agents offline, its row removed."""
        await self._db(self._store.unregister_hub, self.hub_id, utcnow())

    def reports_stored(self, count: int) -> None:
        self._reports += count

    def record(self, agent_id: str, connected: bool, at: datetime) -> str | None:
        """On the store thread: an agent's first connection here came up, or its last one
        ended. Returns the agent's agency when its presence changed; None when it did not
        (a disconnect after another connection, maybe on another hub, took it over)."""
        if connected:
            held = self._store.agent_connected(self.hub_id, agent_id, at)
            if held is None:
                return None
            self._epochs[agent_id] = held.epoch
            return held.agency
        epoch = self._epochs.get(agent_id)
        if epoch is None:
            return None  # its connect was never recorded (the store failed then)
        agency = self._store.agent_disconnected(self.hub_id, agent_id, epoch, at)
        del self._epochs[agent_id]
        return agency

    async def run(self, on_change: OnChange) -> None:
        """Heartbeat every `heartbeat_s`, then remove dead hubs; until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat(on_change)
            except Exception:
                log_failure(log, "the hub's heartbeat failed")

    async def beat(self, on_change: OnChange) -> None:
        now = time.monotonic()
        rate = self._reports / max(now - self._since, 1e-3)
        self._reports, self._since = 0, now
        if not await self._db.urgent(self._heartbeat, rate, utcnow()):
            log.warning("hub %s was taken for dead (no heartbeat in the store for %g s): "
                        "registering again", self.hub_id, self.timeout_s)
            taken = await self._db(self._rejoin, utcnow())
            if taken:
                await on_change([(h.agent_id, h.agency) for h in taken], True)
        sweep = await self._db(self._store.sweep_hubs, self.hub_id, utcnow())
        for hub_id in sweep.hubs:
            log.warning("hub %s taken for dead (no heartbeat within its timeout): removed "
                        "from the registry", hub_id)
        if sweep.agents:
            log.warning("%d agents the dead hubs held marked offline", len(sweep.agents))
            await on_change(_pairs(sweep.agents), False)

    def _heartbeat(self, rate: float, at: datetime) -> bool:
        """On the store thread (the count of agents held is the store thread's)."""
        return self._store.hub_heartbeat(self.hub_id, len(self._epochs), round(rate, 3), at)

    def _rejoin(self, at: datetime) -> list[Held]:
        """On the store thread: register again and take back the agents still connected
        here that no other hub took meanwhile (a disconnect of the others is fenced)."""
        taken = self._store.rejoin_hub(self.hub_id, self.address, self.timeout_s,
                                       estate_version(), self.started_at,
                                       sorted(self._epochs), at)
        self._epochs.update((h.agent_id, h.epoch) for h in taken)
        return taken


def _pairs(agents: list[Released]) -> list[tuple[str, str]]:
    return [(a.agent_id, a.agency) for a in agents]


def estate_version() -> str | None:
    """The installed Estate's version, as the registry shows it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("estate-inventory")
    except PackageNotFoundError:
        return None
