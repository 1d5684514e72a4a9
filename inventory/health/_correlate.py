"""The incident correlator: from who is offline and which probes fail, per site, the incidents
to open, update, reopen and resolve (pure but for a warning when a site reaches its cap: the
store reads its inputs and applies its plan).

Three kinds, each with a `subject` unique while open (docs/configuration.md "Incidents and
thresholds"):

- `site_outage` ("site:<agency>/<site>"): within `window_s`, at least `share` of a site's hosts
  and at least `min_hosts` went offline and are still offline. One incident lists them all,
  and the hosts that go later while it is open; none of them gets a host incident of its own.
  It holds while the listed hosts still offline meet the same thresholds. Gone within the
  window is by the hosts' times offline, read against the pass's clock; a host a pass first
  saw offline within the window counts too, if the times of the hosts counted together are
  within a window of each other: a pass that comes late (its store busy for longer than the
  window) still sees a site go down together, not one host at a time.
- `host_offline` ("host:<agent id>"): a host offline longer than `grace_s` outside any site
  outage. The grace is the window by default, so a host is only taken for alone once the
  window in which it could have been part of a site outage is over.
- `shared_service` ("service:<agency>/<site>/<probe name>"): at least `shared_min_hosts`
  online hosts of one site fail the same probe (name, kind and target). At most
  `shared_max_per_site` are open per site at once: past it none opens there (the probes
  failing on the most hosts are opened first), and the episode is logged and audited once.

Hysteresis: an incident resolves only once its condition has been clear for `hold_s`, timed
from the last of its hosts to recover (read from the store, so a correlator taking over on
another hub times it the same). A recurrence within the hold updates the open incident
(`hosts_changed`); after resolution, one within `hold_s` of it reopens the same incident
(`reopened`), later ones open a new one. A flapping site link is one incident.

Agent-supplied text (hostnames, probe names, targets) only ever lands in titles and details
as data.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from estate.inventory.sanitise import quoted
from estate.inventory.times import iso, parse_time

log = logging.getLogger("estate.hub")

SITE_OUTAGE, SHARED_SERVICE, HOST_OFFLINE = "site_outage", "shared_service", "host_offline"
KINDS = (SITE_OUTAGE, SHARED_SERVICE, HOST_OFFLINE)
# Host ids an `opened` event's detail names: the incident's hosts are in incident_hosts.
DETAIL_HOSTS = 50


@dataclass(frozen=True)
class Thresholds:
    """`estate-hub serve`'s incident flags (docs/configuration.md)."""

    window_s: float = 120.0  # --outage-window
    share: float = 0.5  # --outage-share
    min_hosts: int = 3  # --outage-min-hosts
    grace_s: float | None = None  # --host-offline-grace; None: the window
    hold_s: float = 300.0  # --resolve-hold
    shared_min_hosts: int = 3  # --shared-min-hosts
    # --shared-max-per-site. Probe names come from agents: three hostile agents of a site
    # inventing new failing names every report would otherwise open an incident per name (16
    # per report), each with its rows, watch events and notifications. 8 is half the 16 probes
    # a hub policy may hold and far more services than one site shares in practice (a file
    # server, a DNS server, a gateway, a printer), so a real site-wide trouble still shows
    # whole, and an attacker's share of the store and the alert queue stays a few rows a hold.
    shared_max_per_site: int = 8

    @property
    def tick_s(self) -> float:
        """The slow timer, for what time alone changes (a hold, a grace) and for hosts'
        connectivity verdicts: 5 s, or a third of the shortest threshold when that is
        shorter, so a transition comes within a third of its threshold's time (0.5 s at
        least: each pass goes over every offline host in memory)."""
        return min(5.0, max(0.5, min(self.window_s, self.hold_s, self.host_grace_s) / 3))

    @property
    def host_grace_s(self) -> float:
        return self.window_s if self.grace_s is None else self.grace_s

    def needed(self, total: int) -> int:
        """Offline hosts that make an outage of a site of `total` hosts."""
        return max(self.min_hosts, math.ceil(self.share * total))


# --- inputs (read by the store, `IncidentRecords.health_inputs`) -------------------------

@dataclass(frozen=True)
class OfflineHost:
    agent_id: str
    agency: str
    site: str
    since: str  # iso: when it went offline
    hostname: str | None


@dataclass(frozen=True)
class NetRow:
    """A host whose `hosts.net` changed (or, on a first read, every host's)."""

    agent_id: str
    agency: str
    site: str
    net: str | None  # hosts.net JSON text
    net_at: str


@dataclass
class OpenIncident:
    id: int
    kind: str
    subject: str
    agency: str
    site: str
    agent_id: str | None
    probe: str | None
    updated_at: str
    hosts: dict[str, tuple[str, str | None]]  # agent id -> (since, until: None while affected)


@dataclass(frozen=True)
class HealthInputs:
    sites: dict[tuple[str, str], int]  # (agency, site) -> its hosts (enrolled, not revoked)
    offline: dict[str, OfflineHost]  # agent id -> the host; read only (the store keeps it)
    revoked: set[str]
    net: list[NetRow]
    net_position: str | None  # the newest net_at read
    open: list[OpenIncident]
    resolved: dict[str, tuple[int, str]]  # subject -> (id, resolved_at), resolved recently
    # Offline now and not at the store's previous read (or since another time); none on a
    # correlator's first read, to which all it finds offline is old news.
    went_offline: set[str] = field(default_factory=set)


# --- the plan (applied by the store in one transaction) ----------------------------------

@dataclass
class Open:
    kind: str
    subject: str
    agency: str
    site: str
    agent_id: str | None
    probe: str | None
    title: str
    hosts: list[tuple[str, str]]  # (agent id, since)
    detail: dict[str, object]
    reopen: int | None = None  # the recently resolved incident to reopen


@dataclass
class Update:
    id: int
    added: list[tuple[str, str]] = field(default_factory=list)  # (agent id, since)
    recovered: list[str] = field(default_factory=list)  # until = now
    refailed: list[str] = field(default_factory=list)  # until back to NULL
    affected: int = 0  # hosts affected after the change


@dataclass
class Resolve:
    id: int


@dataclass
class Capped:
    """A site reached `shared_max_per_site` open shared-service incidents and more probes
    fail there: none more opens (planned once per episode, audited `incidents_capped`)."""

    agency: str
    site: str
    open: int  # its shared-service incidents open
    held_back: int  # failing probes that would have opened one
    probes: list[str]  # their names (the first DETAIL_HOSTS)


Action = Open | Update | Resolve | Capped


class Correlator:
    """Plans each pass; keeps the hosts' failing probes between passes (read incrementally
    by `hosts.net_at`) and when it started leading (no incident opens before a window has
    passed: after a hub restart the agents are still reconnecting)."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self.reset()

    def reset(self) -> None:
        """Forget everything: another hub leads, or this one starts leading again."""
        self.failing: dict[str, tuple[str, str, frozenset[tuple[str, str, str]], str]] = {}
        self.net_position: str | None = None
        self.leading_since: datetime | None = None
        # Sites at the shared-service cap now: told once when they reach it, again only after
        # a pass at which nothing was held back there.
        self.capped: set[tuple[str, str]] = set()
        # Agent id -> when a pass first saw it offline (iso), kept for a window.
        self.seen_offline: dict[str, str] = {}

    def plan(self, inputs: HealthInputs, now: datetime) -> list[Action]:
        first = self.leading_since is None
        if self.leading_since is None:
            self.leading_since = now
        self._take_net(inputs.net)
        self._see_offline(inputs, now, first)
        if inputs.net_position is not None and (self.net_position is None
                                                or inputs.net_position > self.net_position):
            self.net_position = inputs.net_position
        may_open = now - self.leading_since >= timedelta(seconds=self.t.window_s)
        offline = inputs.offline
        open_by_subject = {i.subject: i for i in inputs.open}
        actions: list[Action] = []
        # Hosts covered by an open incident of their own, and by an open site outage.
        own = {i.agent_id for i in inputs.open if i.kind == HOST_OFFLINE and i.agent_id}
        in_outage: set[str] = set()
        actions += self._site_outages(inputs, offline, open_by_subject, own, in_outage, now,
                                      may_open)
        actions += self._hosts(inputs, offline, own, in_outage, now, may_open)
        actions += self._services(inputs, offline, open_by_subject, now, may_open)
        return actions

    # --- site outages ---------------------------------------------------------------------

    def _site_outages(self, inputs: HealthInputs, offline: dict[str, OfflineHost],
                      open_by_subject: dict[str, OpenIncident], own: set[str],
                      in_outage: set[str], now: datetime, may_open: bool) -> list[Action]:
        window_start = iso(now - timedelta(seconds=self.t.window_s))
        open_sites = {(i.agency, i.site) for i in inputs.open if i.kind == SITE_OUTAGE}
        seen = self.seen_offline
        # The hosts a pass needs: at a site with an outage open, every one offline; at the
        # others, those gone within the window (or first seen offline within it), and only
        # while outages may open. Hosts offline for longer elsewhere are left out: with
        # 100,000 offline, nearly all.
        by_site: dict[tuple[str, str], dict[str, OfflineHost]] = defaultdict(dict)
        for agent_id, host in offline.items():
            key = (host.agency, host.site)
            gone_lately = host.since >= window_start or agent_id in seen
            if (key in open_sites or (may_open and gone_lately)) and agent_id not in own:
                by_site[key][agent_id] = host
        actions: list[Action] = []
        for agency, site in sorted(set(by_site) | open_sites):
            down = by_site.get((agency, site), {})
            need = self.t.needed(inputs.sites.get((agency, site), 0))
            subject = f"site:{agency}/{site}"
            incident = open_by_subject.get(subject)
            if incident is None:
                # No outage open here: `down` holds only the hosts gone lately.
                recent = sorted((h.since, a) for a, h in down.items())
                if may_open and inputs.sites.get((agency, site)) and \
                        _largest_burst([since for since, _ in recent], window_start,
                                       self.t.window_s) >= need:
                    hosts = [(a, since) for since, a in recent]
                    in_outage.update(a for a, _ in hosts)
                    actions.append(self._open(inputs, SITE_OUTAGE, subject, agency, site,
                                              None, None, _site_title(agency, site), hosts))
                continue
            update, affected = _follow(incident, set(down), {a: h.since for a, h in
                                                               down.items()})
            in_outage.update(affected)
            actions += _conclude(incident, update, len(affected) >= need, now, self.t.hold_s)
        return actions

    def _see_offline(self, inputs: HealthInputs, now: datetime, first: bool) -> None:
        """Note when a pass first saw each host offline, for a window (the store's read
        says which went offline since its previous one). One seen in the correlator's first
        window, when nothing opens, is news for a window after it: a site gone then is an
        outage once one may open, not a host incident each. The first pass's read (whole)
        tells no news: there, the hosts gone within a window before it are news (those a
        restarted hub marked offline as it started, or a dead hub's, swept)."""
        assert self.leading_since is not None
        window = timedelta(seconds=self.t.window_s)
        at, start = iso(max(now, self.leading_since + window)), iso(now - window)
        news = {a for a, host in inputs.offline.items() if host.since >= start} if first \
            else inputs.went_offline
        for agent_id in news:
            self.seen_offline.setdefault(agent_id, at)
        self.seen_offline = {a: t for a, t in self.seen_offline.items()
                             if t >= start and a in inputs.offline}

    # --- lone hosts -----------------------------------------------------------------------

    def _hosts(self, inputs: HealthInputs, offline: dict[str, OfflineHost], own: set[str],
               in_outage: set[str], now: datetime, may_open: bool) -> list[Action]:
        actions: list[Action] = []
        grace_start = iso(now - timedelta(seconds=self.t.host_grace_s))
        for incident in inputs.open:
            if incident.kind != HOST_OFFLINE or incident.agent_id is None:
                continue
            host = offline.get(incident.agent_id)
            down = {host.agent_id: host.since} if host else {}
            update, affected = _follow(incident, set(down), down)
            actions += _conclude(incident, update, bool(affected), now, self.t.hold_s)
        if not may_open:
            return actions
        # Filtered before sorting: hosts with an incident of their own (all of them once an
        # estate has been down a while) are most of the offline hosts, and need nothing.
        due = sorted(a for a, h in offline.items()
                     if h.since <= grace_start and a not in own and a not in in_outage)
        for agent_id in due:
            host = offline[agent_id]
            actions.append(self._open(inputs, HOST_OFFLINE, f"host:{agent_id}", host.agency,
                                      host.site, agent_id, None,
                                      f"{host.hostname or agent_id} offline",
                                      [(agent_id, host.since)]))
        return actions

    # --- shared services ------------------------------------------------------------------

    def _take_net(self, rows: list[NetRow]) -> None:
        for row in rows:
            failing = _failing(row.net)
            if failing:
                self.failing[row.agent_id] = (row.agency, row.site, failing, row.net_at)
            else:
                self.failing.pop(row.agent_id, None)

    def _services(self, inputs: HealthInputs, offline: dict[str, OfflineHost],
                  open_by_subject: dict[str, OpenIncident], now: datetime,
                  may_open: bool) -> list[Action]:
        # (agency, site, probe name) -> (kind, target) -> {agent id: since}, online hosts only.
        groups: dict[tuple[str, str, str], dict[tuple[str, str], dict[str, str]]] = \
            defaultdict(lambda: defaultdict(dict))
        for agent_id, (agency, site, failing, since) in self.failing.items():
            if agent_id in offline or agent_id in inputs.revoked:
                continue
            for name, kind, target in failing:
                groups[(agency, site, name)][(kind, target)][agent_id] = since
        actions: list[Action] = []
        open_services = {(i.agency, i.site, i.probe or "") for i in inputs.open
                         if i.kind == SHARED_SERVICE}
        open_per_site: dict[tuple[str, str], int] = defaultdict(int)
        for agency, site, _ in open_services:
            open_per_site[(agency, site)] += 1
        # (agency, site) -> the incidents that would open: (probe name, kind, target, hosts).
        wanted: dict[tuple[str, str], list[tuple[str, str, str, dict[str, str]]]] = \
            defaultdict(list)
        for agency, site, name in sorted(set(groups) | open_services):
            by_probe = groups.get((agency, site, name), {})
            subject = f"service:{agency}/{site}/{name}"
            incident = open_by_subject.get(subject)
            if incident is None:
                if not by_probe:
                    continue
                # The largest group of hosts failing the same target under this name.
                (kind, target), hosts = max(by_probe.items(),
                                            key=lambda kv: (len(kv[1]), kv[0]))
                if may_open and len(hosts) >= self.t.shared_min_hosts:
                    wanted[(agency, site)].append((name, kind, target, hosts))
                continue
            down: dict[str, str] = {}
            for hosts in by_probe.values():
                down.update(hosts)
            update, affected = _follow(incident, set(down), down)
            actions += _conclude(incident, update, len(affected) >= self.t.shared_min_hosts,
                                 now, self.t.hold_s)
        for (agency, site), candidates in sorted(wanted.items()):
            # The probes failing on the most hosts first: past the cap, those are the ones
            # worth an incident (an attacker's invented names fail on a few hosts each).
            candidates.sort(key=lambda c: (-len(c[3]), c[0]))
            room = max(0, self.t.shared_max_per_site - open_per_site[(agency, site)])
            for name, kind, target, hosts in candidates[:room]:
                title = f"{name} ({kind} {target}) failing at {_site_name(agency, site)}"
                actions.append(self._open(inputs, SHARED_SERVICE,
                                          f"service:{agency}/{site}/{name}", agency, site,
                                          None, name, title, sorted(hosts.items()),
                                          {"kind": kind, "target": target}))
            held_back = [c[0] for c in candidates[room:]]
            if held_back and (agency, site) not in self.capped:
                self.capped.add((agency, site))
                now_open = open_per_site[(agency, site)] + len(candidates[:room])
                log.warning("incidents: site %s of agency %s has %d shared-service incidents "
                            "open, the most --shared-max-per-site allows: %d more failing "
                            "probes there open none until some resolve",
                            quoted(site, 100), quoted(agency, 100), now_open, len(held_back))
                actions.append(Capped(agency, site, now_open, len(held_back),
                                      held_back[:DETAIL_HOSTS]))
        # An episode ends at a pass that held nothing back at the site.
        self.capped = {s for s in self.capped
                       if len(wanted.get(s, ())) > max(0, self.t.shared_max_per_site
                                                       - open_per_site[s])}
        return actions

    # --- shared ---------------------------------------------------------------------------

    def _open(self, inputs: HealthInputs, kind: str, subject: str, agency: str, site: str,
              agent_id: str | None, probe: str | None, title: str,
              hosts: list[tuple[str, str]], extra: dict[str, object] | None = None) -> Open:
        detail: dict[str, object] = {"hosts": [a for a, _ in hosts[:DETAIL_HOSTS]],
                                     "count": len(hosts), **(extra or {})}
        again = inputs.resolved.get(subject)
        return Open(kind, subject, agency, site, agent_id, probe, title, hosts, detail,
                    reopen=again[0] if again else None)


def _follow(incident: OpenIncident, down: set[str],
            since: dict[str, str]) -> tuple[Update, set[str]]:
    """How an open incident's hosts moved: hosts newly down added, listed ones back up
    recovered, recovered ones down again re-failed. Returns the update and the hosts
    affected after it."""
    update = Update(incident.id)
    for agent_id in sorted(down - set(incident.hosts)):
        update.added.append((agent_id, since[agent_id]))
    for agent_id, (_, until) in sorted(incident.hosts.items()):
        if until is None and agent_id not in down:
            update.recovered.append(agent_id)
        elif until is not None and agent_id in down:
            update.refailed.append(agent_id)
    affected = {a for a, (_, until) in incident.hosts.items() if until is None}
    affected = (affected - set(update.recovered)) | set(update.refailed) | \
        {a for a, _ in update.added}
    update.affected = len(affected)
    return update, affected


def _conclude(incident: OpenIncident, update: Update, holds: bool, now: datetime,
              hold_s: float) -> list[Action]:
    """The update (when hosts moved), and the resolution once the condition has been clear
    for the hold, timed from the last host to recover."""
    actions: list[Action] = []
    if update.added or update.recovered or update.refailed:
        actions.append(update)
    if holds:
        return actions
    untils = [until for _, until in incident.hosts.values() if until is not None]
    if update.recovered:
        untils.append(iso(now))
    clear_since = max(untils, default=incident.updated_at)
    if clear_since <= iso(now - timedelta(seconds=hold_s)):
        actions.append(Resolve(incident.id))
    return actions


def _largest_burst(times: list[str], window_start: str, window_s: float) -> int:
    """The most of these sorted `iso()` times that lie within `window_s` of each other:
    all of them when none is before `window_start` (a pass on time); hosts a late pass
    first saw offline may be further apart. An unreadable time counts for nothing."""
    if not times or times[0] >= window_start:
        return len(times)
    moments = []
    for text in times:
        try:
            moments.append(parse_time(text))
        except ValueError:
            continue
    best, first = 0, 0
    for last, moment in enumerate(moments):
        while (moment - moments[first]).total_seconds() > window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def _failing(net: str | None) -> frozenset[tuple[str, str, str]]:
    """The failing probes (name, kind, target) of a host's `hosts.net`; none when it cannot
    be read (the store wrote it, but a correlator never stops on one row)."""
    if not net:
        return frozenset()
    try:
        doc = json.loads(net)
        return frozenset((str(p.get("name")), str(p.get("kind")), str(p.get("target")))
                         for p in doc.get("failing") or () if isinstance(p, dict))
    except (ValueError, TypeError, AttributeError):
        return frozenset()


def _site_name(agency: str, site: str) -> str:
    return site or f"{agency} (no site)"


def _site_title(agency: str, site: str) -> str:
    return f"Site outage at {_site_name(agency, site)}"
