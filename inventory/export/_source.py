"""Rows of each report, read through a read-only store handle of their own (an export
thread's), in the operator's scope.

Hosts come either as the hub knows them now or as it knew them at `as_of`: each host's last
full report received by then (kept `--history-days`, one a host a day at least), its
presence then, and whether it was revoked then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from estate.inventory.compliance import ComplianceSummary, summarise_outcomes
from estate.inventory.export._eos import os_for_support, support_of
from estate.inventory.export._register import Entry, normal_mac
from estate.inventory.filters import compile_filter
from estate.inventory.store import (
    AvailabilityHost,
    HostFacts,
    HostQuery,
    HostRow,
    ReaderInterface,
)
from estate.inventory.times import iso, parse_time


@dataclass(frozen=True)
class Selection:
    """What the operator asked for: scope (None: all agencies) and narrowing."""

    scope: list[str] | None
    agency: str | None = None
    site: str | None = None
    filter: str = ""
    as_of: datetime | None = None

    @property
    def query(self) -> HostQuery:
        return HostQuery(self.scope, self.agency, self.site)


class Source:
    def __init__(self, reader: ReaderInterface, now: datetime) -> None:
        self.reader, self.now = reader, now

    # --- hosts ---------------------------------------------------------------------------

    def hosts(self, sel: Selection) -> Iterator[HostFacts]:
        """Hosts in scope, ordered by agency, site, hostname; the filter applied."""
        match = compile_filter(sel.filter) if sel.filter.strip() else None
        hosts = self.reader.hosts_as_of(sel.query, sel.as_of) if sel.as_of else \
            self.reader.hosts_now(sel.query, self.now)
        # As of a date, a host's compliance is the results it had then (the filter's
        # `fail:` and `compliance<N`), read only when the filter asks.
        asks = "compliance" in sel.filter or "fail:" in sel.filter
        then = self._compliance_as_of(sel) if match and sel.as_of and asks else None
        for host in hosts:
            if then is not None:
                host = replace(host, compliance=then.get(host.agent_id))
            if match is None or match(self._list_row(host)):
                yield host

    def _compliance_as_of(self, sel: Selection) -> dict[str, ComplianceSummary]:
        """Each host's compliance summary at `sel.as_of`, from the results kept then."""
        rows: dict[str, list[tuple[str, str, str, str, str]]] = {}
        for r in self.reader.compliance_rows(sel.query, sel.as_of):
            rows.setdefault(r.agent_id, []).append(
                (r.outcome, r.control, r.theme, r.severity, r.title))
        return {agent_id: summarise_outcomes(results) for agent_id, results in rows.items()}

    def pruned_before(self, sel: Selection) -> int:
        """Hosts known at `as_of` whose reports from then are no longer kept (retention)."""
        if sel.as_of is None:
            return 0
        return self.reader.hosts_missing_history(sel.query, sel.as_of)

    @staticmethod
    def _list_row(h: HostFacts) -> HostRow:
        """The host as a host-list row (`estate.inventory.hostlist`), for the shared filter
        syntax."""
        f = h.facts
        ips = f["ips"]
        # Connectivity as the host list has it (`net:` and `rtt` filters): now, the hub's
        # verdict; as of a moment, None (no verdict history), which no `net:` filter matches.
        return HostRow(h.agent_id, h.hostname, h.agency, h.site, h.status, h.net,
                       " ".join(x for x in (f["os_name"], f["os_version"]) if x) or None,
                       f["model"], h.serial, f["cpu"], f["ram_bytes"], f["disk_percent"],
                       ips[0] if ips else None, h.last_seen, h.remote, h.compliance)

    # --- the reports ---------------------------------------------------------------------

    def reference(self, sel: Selection) -> datetime:
        """The moment the export describes: as-of, else now."""
        return sel.as_of or self.now

    def inventory(self, sel: Selection) -> Iterator[list[Any]]:
        day = self.reference(sel).date()
        for h in self.hosts(sel):
            f = h.facts
            support = support_of(_os_for_support(f), f["os_version"])
            yield [h.agent_id, h.agency, h.site, f["hostname"], f["fqdn"], f["serial"],
                   f["vendor"], f["model"], f["chassis"], f["cpu"], f["cpu_cores"],
                   f["ram_bytes"], f["storage_bytes"], f["os_family"], f["os_name"],
                   f["os_version"], f["os_build"],
                   support.end_of_support.isoformat() if support else None,
                   (support.end_of_support >= day) if support else None,
                   "; ".join(f["ips"]) or None, "; ".join(f["macs"]) or None,
                   h.first_seen, h.last_seen, h.status]

    def changes(self, sel: Selection, since: datetime | None) -> Iterator[list[Any]]:
        # The hosts in scope first (a few thousand rows), then one plain pass over the
        # changes in id order: no join per change, which is what costs at 200,000 of them.
        if sel.filter.strip():
            hosts = {h.agent_id: (h.hostname, h.agency) for h in self.hosts(sel)}
        else:
            hosts = {h.agent_id: (h.hostname, h.agency)
                     for h in self.reader.host_names(sel.query)}
        # (without as-of, every change is before now: no upper bound)
        for at, agent_id, kind, subject, old, new, _ in self.reader.change_events(sel.as_of,
                                                                                  since):
            host = hosts.get(agent_id)
            if host is not None:
                yield [at, agent_id, host[0], host[1], kind, subject, old, new]

    def stale(self, sel: Selection, days: int) -> Iterator[list[Any]]:
        ref = self.reference(sel)
        before = iso(ref - timedelta(days=days))
        for h in self.hosts(sel):
            if h.last_seen < before:
                ips = h.ips()
                unseen = (ref - parse_time(h.last_seen)).days
                yield [h.agent_id, h.agency, h.site, h.hostname, h.serial, h.last_seen, unseen,
                       ips[0] if ips else None, h.status]

    def unsupported(self, sel: Selection) -> Iterator[list[Any]]:
        day = self.reference(sel).date()
        for h in self.hosts(sel):
            f = h.facts
            support = support_of(_os_for_support(f), f["os_version"])
            if support and support.end_of_support < day:
                yield [h.agent_id, h.agency, h.site, h.hostname, h.serial, f["os_name"],
                       f["os_version"], f["os_build"], support.os,
                       support.end_of_support.isoformat(),
                       (day - support.end_of_support).days, support.source, h.last_seen,
                       h.status]

    def compliance(self, sel: Selection) -> Iterator[list[Any]]:
        """Each host's result per control (now, or as the store kept it at as-of), then a
        summary row per site and per agency. The filter, if any, picks hosts as in lists."""
        wanted = {h.agent_id for h in self.hosts(sel)} if sel.filter.strip() else None
        sites: dict[tuple[str, str], dict[str, Any]] = {}
        agencies: dict[str, dict[str, Any]] = {}
        host: tuple[str, str, str, list[str]] | None = None

        def finish() -> None:  # the last host's results into its site's and agency's counts
            if host is None:
                return
            outcomes = host[3]
            for counts in (sites.setdefault((host[1], host[2]), _counts()),
                           agencies.setdefault(host[1], _counts())):
                counts["hosts"] += 1
                counts["compliant"] += all(o == "pass" for o in outcomes)
                for o in outcomes:
                    counts[o] += 1

        for r in self.reader.compliance_rows(sel.query, sel.as_of):
            if wanted is not None and r.agent_id not in wanted:
                continue
            if host is None or host[0] != r.agent_id:
                finish()
                host = (r.agent_id, r.agency, r.site, [])
            host[3].append(r.outcome)
            yield ["host", r.agent_id, r.agency, r.site, r.hostname, r.control, r.title,
                   r.theme, r.severity, r.outcome, r.fact, r.reason, r.since,
                   None, None, None, None, None, None]
        finish()
        for (agency, site), counts in sorted(sites.items()):
            yield ["site", None, agency, site, *[None] * 9, *_summary_cells(counts)]
        for agency, counts in sorted(agencies.items()):
            yield ["agency", None, agency, *[None] * 10, *_summary_cells(counts)]

    def reconcile(self, sel: Selection, register: list[Entry],
                  days: int) -> Iterator[list[Any]]:
        hosts = list(self.hosts(sel))
        by_serial = {h.serial.lower(): h for h in hosts if h.serial}
        by_name = _index(hosts, lambda h: [_short(h.hostname)] if h.hostname else [])
        by_mac = _index(hosts, lambda h: [normal_mac(m) for m in h.macs()])
        before = iso(self.reference(sel) - timedelta(days=days))
        matched: set[str] = set()
        for e in register:
            host, how = None, None
            if e.serial and e.serial.lower() in by_serial:
                host, how = by_serial[e.serial.lower()], "serial"
            elif e.hostname and len(by_name.get(_short(e.hostname), [])) == 1:
                host, how = by_name[_short(e.hostname)][0], "hostname"
            elif e.mac and len(by_mac.get(e.mac, [])) == 1:
                host, how = by_mac[e.mac][0], "mac"
            register_cells = [e.line, e.asset_tag, e.serial, e.hostname, _mac_text(e.mac)]
            if host is None:
                yield ["register only (never seen)", *register_cells, None, None, None, None,
                       None, None, None, None]
                continue
            matched.add(host.agent_id)
            conflicts = _conflicts(e, host)
            if host.last_seen < before:
                outcome = f"register only (not seen for {days} days)"
            elif conflicts:
                outcome = "in both, conflicting"
            else:
                outcome = "in both"
            yield [outcome, *register_cells, how, host.agent_id, host.agency, host.site,
                   host.hostname, host.serial, host.last_seen, "; ".join(conflicts) or None]
        for h in hosts:
            if h.agent_id not in matched:
                yield ["estate only", None, None, None, None, None, None, h.agent_id,
                       h.agency, h.site, h.hostname, h.serial, h.last_seen, None]


    def availability(self, sel: Selection, since: datetime, until: datetime,
                     table_row: Callable[[str, list[Any]], None] | None
                     ) -> Iterator[list[Any]]:
        """Each host's online share and outages in [since, until], from presence history.

        The hosts counted (agency, site, hostname order), each with its state at `since`,
        then their presence rows inside the window a chunk of hosts at a time (index seeks
        for a few hundred hosts, held while that chunk is walked). A host's outages and, when
        its site ends, the site's summary go to `table_row` ("outages", "sites"); the host's
        own row is yielded. `table_row` None: a file of the hosts table only (CSV), so no
        row of the other tables is built.
        """
        wanted = {h.agent_id for h in self.hosts(sel)} if sel.filter.strip() else None
        hosts = [h for h in self.reader.availability_hosts(sel.query, since, until)
                 if wanted is None or h.agent_id in wanted]
        window = _Window(iso(since), iso(until), _micros_of(since), _micros_of(until))
        site: _SiteTally | None = None
        for first in range(0, len(hosts), PRESENCE_CHUNK):
            chunk = hosts[first:first + PRESENCE_CHUNK]
            changes: dict[str, list[tuple[str, str, str]]] = {}
            for change in self.reader.presence_changes([h.agent_id for h in chunk], since,
                                                       until):
                rows = changes.get(change[0])
                if rows is None:
                    changes[change[0]] = [change]
                else:
                    rows.append(change)
            for host in chunk:
                if site is None or (site.agency, site.site) != (host.agency, host.site):
                    if site is not None and table_row is not None:
                        table_row("sites", site.row())
                    site = _SiteTally(host.agency, host.site)
                who = [host.agency, host.site, host.hostname, host.agent_id]
                counted = _host_availability(host, window, changes.get(host.agent_id, ()),
                                             who if table_row is not None else None,
                                             table_row)
                site.add(host, counted)
                yield [*who, counted.start, counted.end, counted.share,
                       round(counted.offline_us / 1e6), counted.outages,
                       counted.longest_s, counted.revoked]
        if site is not None and table_row is not None:
            table_row("sites", site.row())


PRESENCE_CHUNK = 500  # hosts whose presence rows are read (and held) at a time
_US_A_SECOND = 1_000_000


@dataclass(frozen=True)
class _Window:
    """[since, until] as store text (fixed width: text order is time order) and as whole
    microseconds since the epoch (exact: every duration and share is whole-number arithmetic
    until its last rounding)."""

    since: str
    until: str
    since_us: int
    until_us: int


@dataclass(frozen=True)
class _Counted:
    """One host's counted time: from, until (store text), microseconds counted and
    offline, its outages (how many, the longest in whole seconds)."""

    start: str
    end: str
    counted_us: int
    offline_us: int
    outages: int
    longest_s: int
    revoked: bool

    @property
    def share(self) -> float | None:
        """Percent online, two decimals; None when no time was counted."""
        if self.counted_us <= 0:
            return None
        return round(100 * (self.counted_us - self.offline_us) / self.counted_us, 2)


def _host_availability(host: AvailabilityHost, window: _Window,
                       changes: Iterable[tuple[str, str, str]], who: list[Any] | None,
                       table_row: Callable[[str, list[Any]], None] | None) -> _Counted:
    """Walk one host's presence rows (agent id, time, state; by time) over its counted time:
    from `since` or its enrolment, to `until` or its revocation. Offline before its first
    presence row. Each outage goes to `table_row` as an "outages" row after `who` (when
    given): this runs for every presence row of the window, so it builds nothing else."""
    start_text, start = window.since, window.since_us
    if host.enrolled_at > start_text:
        start_text, start = host.enrolled_at, _micros(host.enrolled_at)
    revoked = host.revoked_at is not None and host.revoked_at <= window.until
    end_text, end = window.until, window.until_us
    if revoked and host.revoked_at is not None:
        end_text, end = host.revoked_at, _micros(host.revoked_at)
    online = host.state_at_start == "online"
    down_text, down = start_text, start  # when the host went offline (if it is)
    offline = outages = longest = 0
    for _, at_text, state in changes:
        if at_text >= end_text:
            break
        now_online = state == "online"
        if at_text <= start_text:  # before the host's counted time (enrolled since)
            online, down_text, down = now_online, start_text, start
        elif now_online:
            if not online:  # came back
                at = _micros(at_text)
                offline += at - down
                outages += 1
                seconds = round((at - down) / _US_A_SECOND)
                longest = max(longest, seconds)
                if who is not None and table_row is not None:
                    table_row("outages", [*who, down_text, at_text, seconds, False])
                online = True
        elif online:  # went offline
            down_text, down, online = at_text, _micros(at_text), False
    if not online:  # offline at the end: the outage ends there
        offline += end - down
        outages += 1
        seconds = round((end - down) / _US_A_SECOND)
        longest = max(longest, seconds)
        if who is not None and table_row is not None:
            table_row("outages", [*who, down_text, end_text, seconds, not revoked])
    return _Counted(start_text, end_text, end - start, offline, outages, longest, revoked)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_A_MICROSECOND = timedelta(microseconds=1)


def _micros_of(t: datetime) -> int:
    """Whole microseconds since the epoch (UTC; a naive time is taken as UTC)."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // _A_MICROSECOND


def _micros(text: str) -> int:
    """A store time ("2026-11-01T09:30:00.123456Z") in whole microseconds since the epoch:
    parsed in C, a few hundred thousand of them an export."""
    t = datetime.fromisoformat(text)
    try:
        return (t - _EPOCH) // _A_MICROSECOND
    except TypeError:  # no time zone: not the store's own text
        return _micros_of(t)


@dataclass
class _SiteTally:
    agency: str
    site: str
    shares: list[float] = field(default_factory=list)
    hosts: int = 0
    outages: int = 0
    worst: tuple[float, str] | None = None  # (share, host)

    def add(self, host: AvailabilityHost, counted: _Counted) -> None:
        self.hosts += 1
        self.outages += counted.outages
        share = counted.share
        if share is not None:
            self.shares.append(share)
            if self.worst is None or share < self.worst[0]:
                self.worst = (share, host.hostname or host.agent_id)

    def row(self) -> list[Any]:
        average = round(sum(self.shares) / len(self.shares), 2) if self.shares else None
        return [self.agency, self.site, self.hosts, average,
                self.worst[0] if self.worst else None, self.worst[1] if self.worst else None,
                self.outages]


def _counts() -> dict[str, int]:
    return {"hosts": 0, "compliant": 0, "pass": 0, "fail": 0, "unknown": 0}


def _summary_cells(c: dict[str, int]) -> list[Any]:
    """hosts, compliant, passed, failed, unknown, share (percent, one decimal)."""
    total = c["pass"] + c["fail"] + c["unknown"]
    return [c["hosts"], c["compliant"], c["pass"], c["fail"], c["unknown"],
            round(100 * c["pass"] / total, 1) if total else None]


def _os_for_support(facts: dict[str, Any]) -> str | None:
    """The name the end-of-support table matches (`_eos.os_for_support`)."""
    return os_for_support(facts.get("os_product"), facts["os_name"])


def _mac_text(mac: str | None) -> str | None:
    """A normalised MAC (12 hex digits) as people write it: 02:00:00:00:00:01."""
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2)) if mac else None


def _short(name: str) -> str:
    return name.lower().split(".", 1)[0]


def _index(hosts: list[HostFacts],
           keys: Callable[[HostFacts], list[str]]) -> dict[str, list[HostFacts]]:
    index: dict[str, list[HostFacts]] = {}
    for h in hosts:
        for key in keys(h):
            index.setdefault(key, []).append(h)
    return index


def _conflicts(e: Entry, h: HostFacts) -> list[str]:
    out = []
    if e.serial and (h.serial or "").lower() != e.serial.lower():
        out.append(f"serial: {e.serial} / {h.serial or '(none)'}")
    if e.hostname and h.hostname and _short(e.hostname) != _short(h.hostname):
        out.append(f"hostname: {e.hostname} / {h.hostname}")
    if e.mac and e.mac not in {normal_mac(m) for m in h.macs()}:
        out.append(f"mac: {_mac_text(e.mac)} / {', '.join(h.macs()) or '(none)'}")
    return out
