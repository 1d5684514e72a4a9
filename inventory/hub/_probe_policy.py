"""The probe policies this hub hands its agents in report acks (docs/protocol.md, "Reports").

Every place's effective policy is read from the store every REFRESH_S, so a policy set through
any hub's store (`estate-hub probes set`) reaches agents within that, at one small query per
interval however many reports come; each agent's agency and site is read once, the first time
its report says which policy it holds, and kept. A report costs a dict lookup or two.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from estate.inventory.hub._store_thread import StoreThread
from estate.inventory.hub._tasks import log_failure
from estate.inventory.store import StoreInterface

log = logging.getLogger("estate.hub")

REFRESH_S = 10.0
# Agents whose place is kept: past it the cache starts over (one lookup each again), so a
# hub that has seen a great many agents over its life holds no more than this.
MAX_PLACES = 200_000

Tables = list[dict[str, Any]]


class ProbePolicies:
    """The effective policy of every (agency, site), as the store last said, and the places of
    the agents that asked; used on the event loop, read from the store on its thread."""

    def __init__(self, db: StoreThread, store: StoreInterface) -> None:
        self._db, self._store = db, store
        # None until first read: until then acks say nothing rather than "clear".
        self._effective: dict[tuple[str, str], tuple[str, Tables]] | None = None
        self._places: dict[str, tuple[str, str]] = {}

    async def run(self) -> None:
        """Read the policies now, then every REFRESH_S; until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log_failure(log, "reading the probe policies failed")
            await asyncio.sleep(REFRESH_S)

    async def refresh(self) -> None:
        effective = await self._db(self._store.effective_probe_policies)
        self._effective = {place: (digest, [p.as_table() for p in probes])
                           for place, (digest, probes) in effective.items()}

    async def ack(self, agent_id: str, held: object) -> dict[str, Any] | None:
        """The ack's `probe_policy` for a report of `agent_id` saying it holds the policy
        hashed `held` ("" for none): {"hash", "probes"} when it should hold another, None when
        it holds the right one, did not say (`held` not a string: an older agent, or one that
        turned hub probes off) or the policies are not read yet."""
        effective = self._effective
        if not isinstance(held, str) or effective is None:
            return None
        if not effective:  # no policy anywhere: no agent's place is needed
            return None if held == "" else {"hash": "", "probes": []}
        place = self._places.get(agent_id)
        if place is None:
            place = await self._db(self._store.agent_place, agent_id)
            if place is None:
                return None
            if len(self._places) >= MAX_PLACES:
                self._places.clear()
            self._places[agent_id] = place
        digest, probes = effective.get(place) or effective.get((place[0], "")) or ("", [])
        return None if digest == held else {"hash": digest, "probes": probes}
