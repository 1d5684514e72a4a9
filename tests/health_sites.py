"""Simulated agents at three sites, for the estate-health tests (incidents and alerts): a
thread running inventory/simulate.py agents enrolled at chosen sites, which the tests take down
and whose probes they fail, and reads of the store the tests wait on."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from estate.inventory import simulate
from estate.inventory.hub._keys import load_or_create_host_key
from tests.harness import HubProcess, wait_for
from tests.stores import open_test_store

BOUND_S = 90  # generous: the machine is shared; no timing is asserted below it
SITES = [("Fire", "Station 1"), ("Fire", "Station 12"), ("Health", "Clinic")]
PER_SITE = 4
# Small thresholds so the test runs in seconds: an outage is 3 of a site's hosts (and half)
# within 3 s; a lone host is one offline 3 s; resolved once clear for 6 s.
FLAGS = ("--outage-window", "3", "--outage-min-hosts", "3", "--resolve-hold", "6",
         "--shared-min-hosts", "3", "--report-burst", "0")


class SimThread(threading.Thread):
    """Simulated agents (inventory/simulate.py) on an event loop of their own, enrolled at
    the given sites; the test takes agents down and fails their probes through it."""

    def __init__(self, hub: HubProcess, tokens: dict[tuple[str, str], str],
                 sites: list[tuple[str, str]]) -> None:
        super().__init__(daemon=True)
        key, _ = load_or_create_host_key(hub.data)
        self.sim = simulate.Simulator(hub.address, key, interval_s=2.0, reconnect_max_s=1.0,
                                      start_spread_s=0.0)
        self.tokens, self.sites = tokens, sites
        self.idents: list[simulate.Identity] = []
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failed: BaseException | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            self.idents = [await self.sim.enrol(i, self.tokens[site], *site)
                           for i, site in enumerate(self.sites)]
        except BaseException as exc:
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        await asyncio.gather(*(self.sim.run_agent(i) for i in self.idents))

    def at(self, agency: str, site: str) -> list[str]:
        return [i.agent_id for i in self.idents if (i.agency, i.site) == (agency, site)]

    def call(self, fn: Any, *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.sim.stop.set)
        self.join(30)


def start_agents(hub: HubProcess, sites: list[tuple[str, str]],
                  admin: HubProcess | None = None) -> SimThread:
    """Agents at `sites` reporting to `hub`; their tokens made by `admin`'s verbs (the hub
    whose data folder names the store)."""
    tokens = {site: (admin or hub).token(*site, uses=sum(1 for s in sites if s == site))
              for site in sorted(set(sites))}
    sim = SimThread(hub, tokens, sites)
    sim.start()
    assert sim.ready.wait(BOUND_S) and sim.failed is None, sim.failed
    return sim


def online(folder: Path, agent_ids: list[str], online: bool = True) -> bool:
    store = open_test_store(folder)
    try:
        rows = store.db.execute("SELECT id, connected FROM agents").fetchall()
    finally:
        store.close()
    state = {r[0]: bool(r[1]) for r in rows}
    return all(state.get(a) == online for a in agent_ids)


def incidents(folder: Path) -> list[dict[str, Any]]:
    store = open_test_store(folder)
    try:
        return [i.as_dict() for i in store.incidents(None, "all")]
    finally:
        store.close()


def of(folder: Path, subject: str) -> list[dict[str, Any]]:
    return [i for i in incidents(folder) if i["subject"] == subject]


def wait_for_outage(hub: HubProcess, subject: str) -> list[dict[str, Any]]:
    """The site outage `subject`, once open; failing, the incidents there are instead and
    what the hub logged of trouble, so that a missed outage says why."""
    try:
        return wait_for(lambda: of(hub.data, subject), BOUND_S, 0.2, f"the outage {subject}")
    except AssertionError as exc:
        seen = [(i["kind"], i["subject"], i["state"]) for i in incidents(hub.data)]
        trouble = [line for line in hub.log().splitlines()
                   if " WARNING " in line or " ERROR " in line or "correlat" in line]
        raise AssertionError(f"{exc}; incidents instead: {seen}; the hub logged:\n" +
                             "\n".join(trouble[-40:])) from None
