"""The estate overview: per agency and per site, the figures that say whether it is OK.

One pass over the hosts in scope and one over the last day's presence history, so the answer
for 20,000 hosts costs one scan of the hosts table plus an index seek per host, never a query
per host from Python. Figures, per agency and site (and for the whole scope):

- hosts: enrolled hosts, revoked ones left out; online: those whose status is online (the
  host list's status, so stale hosts are not counted online); online_share: online / hosts;
- sparkline: 24 hourly points, oldest first, the newest ending now: the share of the hour the
  hosts were connected (time-weighted from presence history; a host counts from its first
  presence record); None for an hour with no host known;
- open_incidents: incidents open now; stale: hosts whose status is stale;
- unsupported_os: hosts whose OS is past its end of support in Estate's table (the rule the
  `unsupported` export applies); disks_over_90: hosts with a volume over 90% full;
- worst_net: the worst connectivity verdict (ok < degraded < down) among the online hosts
  (an offline host's last verdict is old news: its absence shows in the online share), None
  when no online host has one.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from estate.inventory.health.net import row_of_text
from estate.inventory.store._base import Connection
from estate.inventory.store._common import _scoped, iso, parse_time, utcnow
from estate.inventory.store._hosts import _StatusClock

HOURS = 24
HOUR_S = 3600.0
DISK_FULL_PERCENT = 90.0
NET_RANK = {"ok": 0, "degraded": 1, "down": 2}
_NET_BY_RANK = {rank: state for state, rank in NET_RANK.items()}


class _Figures:
    """Running sums for one place (a site, an agency, or the whole scope).

    Presence is summed without walking the hours of each host: the hosts known (and online)
    as the window opens count for every hour (`known`, `online`); a change at time t adds its
    delta (+1 or -1 host) to the rest of t's hour in seconds (`*_part`) and to every later
    hour from the next on (`*_from`, summed once at the end). So a host costs O(1) per
    presence record, whatever the hours between them.
    """

    __slots__ = ("disks", "hosts", "incidents", "known", "known_from", "known_part", "net",
                 "online", "online_from", "online_now", "online_part", "stale", "unsupported")

    def __init__(self) -> None:
        self.hosts = self.online_now = self.stale = self.unsupported = self.disks = 0
        self.incidents = 0
        self.net = -1  # the worst rank seen; -1: none
        self.known = self.online = 0
        self.known_part, self.online_part = [0.0] * HOURS, [0.0] * HOURS
        self.known_from, self.online_from = [0] * (HOURS + 1), [0] * (HOURS + 1)

    def change(self, offset_s: float, known: int, online: int) -> None:
        """From `offset_s` into the window on: `known` and `online` hosts more (or fewer)."""
        if not 0 <= offset_s < HOURS * HOUR_S:
            return
        hour = int(offset_s // HOUR_S)
        rest = (hour + 1) * HOUR_S - offset_s
        self.known_part[hour] += known * rest
        self.online_part[hour] += online * rest
        self.known_from[hour + 1] += known
        self.online_from[hour + 1] += online

    def add(self, other: _Figures) -> None:
        for name in ("hosts", "online_now", "stale", "unsupported", "disks", "incidents",
                     "known", "online"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.net = max(self.net, other.net)
        for i in range(HOURS):
            self.known_part[i] += other.known_part[i]
            self.online_part[i] += other.online_part[i]
        for i in range(HOURS + 1):
            self.known_from[i] += other.known_from[i]
            self.online_from[i] += other.online_from[i]

    def as_dict(self) -> dict[str, Any]:
        sparkline: list[float | None] = []
        known_hosts, online_hosts = self.known, self.online
        for i in range(HOURS):
            known_hosts += self.known_from[i]
            online_hosts += self.online_from[i]
            known = known_hosts * HOUR_S + self.known_part[i]
            online = online_hosts * HOUR_S + self.online_part[i]
            # Rounding: a share a hair outside 0..1 from float sums reads as what it is.
            sparkline.append(round(min(1.0, max(0.0, online / known)), 3) if known > 0.5
                             else None)
        return {"hosts": self.hosts, "online": self.online_now,
                "online_share": round(self.online_now / self.hosts, 3) if self.hosts else None,
                "sparkline": sparkline, "open_incidents": self.incidents,
                "stale": self.stale, "unsupported_os": self.unsupported,
                "disks_over_90": self.disks, "worst_net": _NET_BY_RANK.get(self.net)}


class OverviewRecords(Connection):
    def overview(self, scope: list[str] | None, now: datetime | None = None) -> dict[str, Any]:
        """The estate overview in scope (the `overview` API op's answer): per agency, its
        figures and its sites' (`_Figures.as_dict`), and the whole scope's (`estate`)."""
        # Loaded here, not with the store: the hub loads the export package at its first
        # export (or overview), not at start.
        from estate.inventory.export._eos import os_for_support, support_of

        now = now or utcnow()
        start = now - timedelta(hours=HOURS)
        places: dict[tuple[str, str], _Figures] = {}
        site_of: dict[str, _Figures] = {}  # agent id -> its site's figures (non-revoked)
        before: dict[str, str | None] = {}  # agent id -> its presence state at `start`
        none_before: set[str] = set()  # hosts with no presence record before `start`
        status_of = _StatusClock(now)
        today = now.date()
        sql, args = _scoped(
            "SELECT h.agent_id, a.name, s.name, g.connected, g.revoked_at, h.last_seen, "
            "h.interval_s, h.os_name, h.os_version, h.facts, h.fullest_volume_percent, h.net, "
            # The state the window opens with: the host's last presence record before it
            # (one seek on presence_agent per host, inside the database).
            "(SELECT p.state FROM presence p WHERE p.agent_id = h.agent_id AND p.at < ? "
            "ORDER BY p.at DESC, p.id DESC LIMIT 1) "
            "FROM hosts h JOIN agents g ON g.id = h.agent_id "
            "JOIN agencies a ON a.id = h.agency_id JOIN sites s ON s.id = h.site_id "
            "WHERE 1 = 1", [iso(start)], scope)
        cursor = self.db.cursor()
        cursor.row_factory = None  # plain tuples: this runs for every host
        for (agent_id, agency, site, connected, revoked_at, last_seen, interval_s, os_name,
             os_version, facts, disk, net, state_before) in cursor.execute(sql, args):
            f = places.get((agency, site))
            if f is None:
                f = places[(agency, site)] = _Figures()
            if revoked_at:
                continue
            f.hosts += 1
            status = status_of(revoked_at, last_seen, connected, interval_s)
            if status == "online":
                f.online_now += 1
                verdict = row_of_text(net)
                if verdict is not None:
                    rank = NET_RANK.get(verdict[0], -1)
                    if rank > f.net:
                        f.net = rank
            elif status == "stale":
                f.stale += 1
            if disk is not None and disk > DISK_FULL_PERCENT:
                f.disks += 1
            product = _os_product(facts)
            support = support_of(os_for_support(product, os_name), os_version)
            if support is not None and support.end_of_support < today:
                f.unsupported += 1
            site_of[agent_id] = f
            # No record before the window: its current state, unless records in the window
            # say otherwise (then it was not known before the first: enrolled in the window).
            if state_before is None:
                none_before.add(agent_id)
                state_before = "online" if connected else "offline"
            before[agent_id] = state_before
        self._presence_in_window(scope, start, now, site_of, before, none_before)
        self._open_incidents(scope, places)
        return _answer(places, now)

    def _presence_in_window(self, scope: list[str] | None, start: datetime, now: datetime,
                            site_of: dict[str, _Figures],
                            before: dict[str, str | None], none_before: set[str]) -> None:
        """Each host's connected seconds per hour of the window into its site's sums."""
        sql, args = _scoped(
            "SELECT p.agent_id, p.at, p.state FROM hosts h "
            "JOIN agencies a ON a.id = h.agency_id "
            "JOIN presence p ON p.agent_id = h.agent_id WHERE p.at >= ?", [iso(start)], scope)
        sql += " ORDER BY p.at, p.id"
        changes: dict[str, list[tuple[datetime, str]]] = {}
        cursor = self.db.cursor()
        cursor.row_factory = None
        for agent_id, at, state in cursor.execute(sql, args):
            if agent_id not in site_of:
                continue  # revoked
            if agent_id not in changes:
                changes[agent_id] = []
                if agent_id in none_before:
                    before[agent_id] = None  # unknown until its first record
            changes[agent_id].append((parse_time(at), state))
        for agent_id, f in site_of.items():
            state = before[agent_id]
            if state is not None:
                f.known += 1
                f.online += state == "online"
            for at, new_state in changes.get(agent_id, ()):
                if new_state != state:
                    offset = (at - start).total_seconds()
                    f.change(offset, (state is None) - 0,
                             (new_state == "online") - (state == "online"))
                    state = new_state

    def _open_incidents(self, scope: list[str] | None,
                        places: dict[tuple[str, str], _Figures]) -> None:
        sql = ("SELECT agency, site, COUNT(*) FROM incidents WHERE state = 'open'")
        args: list[Any] = []
        if scope is not None:
            sql += f" AND agency IN ({', '.join('?' for _ in scope) or 'NULL'})"
            args += scope
        for agency, site, n in self.db.execute(sql + " GROUP BY agency, site", args):
            f = places.get((agency, site))
            if f is None:  # a place whose hosts have all gone
                f = places[(agency, site)] = _Figures()
            f.incidents += int(n)


_DECODER = json.JSONDecoder()
_PRODUCT_KEY = '"os_product":'


def _os_product(facts: str | None) -> str | None:
    """`os_product` of a host's facts (JSON text), decoding that value alone: a key with its
    quotes cannot occur inside a JSON string (its quotes would be escaped there)."""
    if not facts:
        return None  # a host last stored before facts were kept: its display name serves
    at = facts.find(_PRODUCT_KEY)
    if at < 0:
        return None  # facts from before the product was read
    at += len(_PRODUCT_KEY)
    while facts[at:at + 1] in (" ", "\n", "\t"):  # PostgreSQL's jsonb writes ": "
        at += 1
    try:
        value, _ = _DECODER.raw_decode(facts, at)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _answer(places: dict[tuple[str, str], _Figures], now: datetime) -> dict[str, Any]:
    agencies: dict[str, tuple[_Figures, list[dict[str, Any]]]] = {}
    estate = _Figures()
    for (agency, site), f in sorted(places.items()):
        if agency not in agencies:
            agencies[agency] = (_Figures(), [])
        total, sites = agencies[agency]
        total.add(f)
        estate.add(f)
        sites.append({"site": site, **f.as_dict()})
    return {"agencies": [{"agency": agency, **total.as_dict(), "sites": sites}
                         for agency, (total, sites) in agencies.items()],
            "estate": estate.as_dict(), "generated_at": iso(now)}
